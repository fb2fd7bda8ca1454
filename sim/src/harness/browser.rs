//! A real headless Chromium for the console's tests, driven over W3C WebDriver by Debian's
//! `chromedriver` (packages `chromium` and `chromium-driver`, installed by `.ci/run`).
//!
//! The client is the few WebDriver commands the tests use, as JSON over HTTP/1.1 on a
//! loopback socket ([`http`]), which also sends the tests' hand-made requests (forged
//! POSTs). Without chromedriver, [`Browser::start`] fails with what to install.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A response to [`http`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header lines, lowercase names.
    pub headers: Vec<(String, String)>,
    /// The body as text (invalid UTF-8 replaced), and as it came.
    pub body: String,
    pub bytes: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to `addr` (`127.0.0.1:PORT`), `Connection: close`, read to the end.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<HttpResponse> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await?;
    // Read until the whole response is in: some servers keep the connection open despite
    // `Connection: close`, so the length (or the last chunk) says where it ends.
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut buf).await?;
            raw.extend_from_slice(&buf[..n]);
            if n == 0 || complete(&raw) {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .context("no response within 60 s")??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("a response without a header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("a response without a status")?;
    let headers = header_lines(lines);
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        payload = dechunk(&payload)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&payload).into_owned(),
        bytes: payload,
    })
}

fn header_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

/// Whether `raw` holds a whole response: its headers and the body they announce.
fn complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let headers = header_lines(head.split("\r\n").skip(1));
    let body = &raw[split + 4..];
    if let Some((_, length)) = headers.iter().find(|(k, _)| k == "content-length") {
        return length.parse::<usize>().is_ok_and(|n| body.len() >= n);
    }
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without a size line")?;
        let size_text = String::from_utf8_lossy(&data[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("a bad chunk size")?;
        data = &data[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).context("a short chunk")?);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

/// A Chromium session behind a chromedriver process.
pub struct Browser {
    driver: tokio::process::Child,
    addr: String,
    session: String,
}

/// Finds a program on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium 1280 px wide.
    pub async fn start() -> anyhow::Result<Browser> {
        let Some(chromedriver) = which("chromedriver") else {
            bail!(
                "chromedriver is not installed: the console's browser tests need Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; .ci/run installs them)"
            );
        };
        let chromium = ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|p| which(p))
            .context("chromium is not installed: apt-get install -y chromium chromium-driver")?;
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let driver = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http(&addr, "GET", "/status", &[], "").await
                && r.status == 200
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("chromedriver did not answer on {addr} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
        };
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         "--hide-scrollbars"],
            },
        }}});
        let created = browser
            .command("POST", "/session", Some(capabilities))
            .await?;
        browser.session = created["sessionId"]
            .as_str()
            .context("chromedriver gave no session id")?
            .to_owned();
        Ok(browser)
    }

    async fn command(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers = [("Content-Type", "application/json; charset=utf-8")];
        let response = http(&self.addr, method, path, &headers, &body).await?;
        let value: Value = serde_json::from_str(&response.body)
            .with_context(|| format!("chromedriver answered {}", response.body))?;
        if response.status != 200 {
            bail!(
                "WebDriver {method} {path}: {} ({})",
                value["value"]["error"],
                value["value"]["message"]
            );
        }
        Ok(value["value"].clone())
    }

    async fn session(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        self.command(method, &path, body).await
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.session("POST", "/url", Some(json!({"url": url})))
            .await
            .map(drop)
    }

    /// The elements matching a CSS selector (none is not an error).
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let found = self
            .session(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The one element matching a CSS selector (the first, if several).
    pub async fn find(&self, css: &str) -> anyhow::Result<String> {
        self.find_all(css)
            .await?
            .into_iter()
            .next()
            .with_context(|| format!("no element matches {css:?}"))
    }

    /// An element's rendered text.
    pub async fn text(&self, element: &str) -> anyhow::Result<String> {
        let text = self
            .session("GET", &format!("/element/{element}/text"), None)
            .await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    pub async fn click(&self, element: &str) -> anyhow::Result<()> {
        self.session(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    pub async fn send_keys(&self, element: &str, text: &str) -> anyhow::Result<()> {
        self.session(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await
        .map(drop)
    }

    /// The text of the whole page as rendered.
    pub async fn page_text(&self) -> anyhow::Result<String> {
        let body = self.find("body").await?;
        self.text(&body).await
    }

    /// Waits (up to 10 s) until the page's text contains `needle`: after a click that
    /// submits a form, the next page may still be loading.
    pub async fn wait_for_text(&self, needle: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.page_text().await.unwrap_or_default();
            if text.contains(needle) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the page does not say {needle:?} within 10 s; it says: {text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs a script in the page and returns its value.
    pub async fn execute(&self, script: &str) -> anyhow::Result<Value> {
        self.session(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The page's URL.
    pub async fn url(&self) -> anyhow::Result<String> {
        let url = self.session("GET", "/url", None).await?;
        Ok(url.as_str().unwrap_or_default().to_owned())
    }

    /// Sets the page's viewport to `width` × `height` CSS pixels, as a phone (below 600 px,
    /// where the page's `viewport` meta applies) or a desktop screen would have it.
    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        let params = json!({
            "width": width,
            "height": height,
            "deviceScaleFactor": 1,
            "mobile": width < 600,
        });
        self.session(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": params})),
        )
        .await
        .map(drop)
    }

    /// A PNG of the whole page at `width` px into `path` (the viewport grows to the page's
    /// height first, up to 6000 px), then back to 1280 × 900.
    pub async fn screenshot(&self, width: u32, path: &Path) -> anyhow::Result<()> {
        self.resize(width, 900).await?;
        let height = self
            .execute("return document.documentElement.scrollHeight")
            .await?
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 6000) as u32;
        self.resize(width, height).await?;
        let png = self.session("GET", "/screenshot", None).await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().context("no screenshot data")?)
            .context("screenshot is not base64")?;
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        self.resize(1280, 900).await
    }

    /// Ends the session (closing Chromium) and chromedriver.
    pub async fn close(mut self) {
        let _ = self
            .command("DELETE", &format!("/session/{}", self.session), None)
            .await;
        let _ = self.driver.kill().await;
    }
}
