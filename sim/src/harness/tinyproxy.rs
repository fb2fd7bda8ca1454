//! Debian's tinyproxy, run by a test as a real hospital HTTP proxy: a process of its own on
//! a free loopback port, with a configuration of the test's (which ports CONNECT may reach,
//! basic-auth credentials) and its log in a temporary directory. Not the fault-injecting
//! TCP proxy of [`super::proxy`]: this one speaks HTTP CONNECT.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tinyproxy binary of the Debian package.
pub const TINYPROXY: &str = "/usr/bin/tinyproxy";

/// A running tinyproxy, killed on drop.
pub struct Tinyproxy {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// What a [`Tinyproxy`] allows.
pub struct TinyproxyConfig<'a> {
    /// The only port CONNECT may reach (others get 403).
    pub connect_port: u16,
    /// Basic-auth user and password it requires, if any (letters, digits, `._-`).
    pub basic_auth: Option<(&'a str, &'a str)>,
}

impl Tinyproxy {
    /// Starts tinyproxy on a free loopback port and waits until it accepts connections.
    /// Panics, naming the Debian package, if it is not installed.
    pub fn start(config: &TinyproxyConfig<'_>) -> Tinyproxy {
        assert!(
            std::path::Path::new(TINYPROXY).exists(),
            "{TINYPROXY} not found: these tests need a real HTTP proxy; install the Debian package tinyproxy (apt-get install tinyproxy)"
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tinyproxy.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut text = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 100\nLogLevel Info\nLogFile \"{}\"\nConnectPort {}\n",
            log.display(),
            config.connect_port
        );
        if let Some((user, password)) = config.basic_auth {
            // tinyproxy's grammar takes only letters, digits and `._-` here, unquoted.
            text.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf, text).unwrap();
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(TINYPROXY)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {TINYPROXY}: {e}"));
        let proxy = Tinyproxy {
            port,
            child: Some(child),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not listen on port {port}; its log: {}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    /// `http://[user:password@]127.0.0.1:PORT`, every character of the user and password
    /// but letters and digits percent-encoded (legal, and the agent must decode it).
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((user, password)) => format!(
                "http://{}:{}@127.0.0.1:{}",
                encode(user),
                encode(password),
                self.port
            ),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many CONNECT requests for `target` (`host:port`) it logged.
    pub fn connects_to(&self, target: &str) -> usize {
        self.log()
            .matches(&format!("CONNECT {target} HTTP/1.1"))
            .count()
    }

    /// Kills it (every tunnel through it closes).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
