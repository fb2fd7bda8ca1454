//! HTML building blocks of the console: escaping, the page frame, status words, and the SVG
//! line plots and bars. Everything a page shows passes through [`esc`] (or is a number the
//! console formatted itself); there is no script anywhere.

use std::fmt::Write as _;

/// The stylesheet, served at `/static/console.css` (no CDN: facilities may be offline).
pub const CSS: &str = include_str!("console.css");

/// The icon, served at `/static/icon.svg`.
pub const ICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\"><circle cx=\"8\" cy=\"8\" r=\"7\" fill=\"#1d5e3a\"/><path d=\"M4 8h8M8 4v8\" stroke=\"#fff\" stroke-width=\"2\"/></svg>";

/// Escapes text for an HTML element body or a double-quoted attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value (everything but unreserved characters).
pub fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A navigation entry: its path and label.
pub struct NavItem {
    pub path: &'static str,
    pub label: &'static str,
}

/// The frame around every page: title, navigation (the current page marked for screen
/// readers too), who the console acts as, and the body.
pub struct Frame<'a> {
    pub title: &'a str,
    pub current: &'a str,
    pub nav: &'a [NavItem],
    /// `operator admin`, `auditor moh-audit`, `offline ledger`.
    pub acting_as: &'a str,
    /// Seconds after which the browser reloads the page (a round is running).
    pub refresh_s: Option<u32>,
}

impl Frame<'_> {
    pub fn render(&self, body: &str) -> String {
        let mut out = String::with_capacity(body.len() + 2048);
        out.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
        out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
        if let Some(s) = self.refresh_s {
            let _ = write!(out, "<meta http-equiv=\"refresh\" content=\"{s}\">");
        }
        let _ = write!(
            out,
            "<title>{} · Harambee console</title><link rel=\"stylesheet\" href=\"/static/console.css\"><link rel=\"icon\" href=\"/static/icon.svg\"></head><body>",
            esc(self.title)
        );
        out.push_str("<a class=\"skip\" href=\"#main\">Skip to content</a><header><span class=\"brand\">Harambee</span><nav aria-label=\"Main\"><ul>");
        for item in self.nav {
            let current = if item.path == self.current {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(
                out,
                "<li><a href=\"{}\"{current}>{}</a></li>",
                item.path, item.label
            );
        }
        let _ = write!(
            out,
            "</ul></nav><span class=\"who\">as {}</span></header><main id=\"main\" tabindex=\"-1\"><h1>{}</h1>",
            esc(self.acting_as),
            esc(self.title)
        );
        out.push_str(body);
        out.push_str("</main></body></html>\n");
        out
    }
}

/// How a status reads: a word always, and a class that colours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Warn,
    Bad,
    Neutral,
}

/// `<span class="status good">connected</span>`: the word is the signal, the colour helps.
pub fn status(word: &str, tone: Tone) -> String {
    let class = match tone {
        Tone::Good => "good",
        Tone::Warn => "warn",
        Tone::Bad => "bad",
        Tone::Neutral => "neutral",
    };
    format!("<span class=\"status {class}\">{}</span>", esc(word))
}

/// Colours of plot series; with a dash pattern each, so series differ without colour too.
const PALETTE: [&str; 8] = [
    "#1b6ca8", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#b8860b",
];
const DASHES: [&str; 3] = ["", "6 3", "2 3"];

/// One line of a plot: a facility's values by round number (`None`: no value that round).
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(u32, f64)>,
}

/// Up to this many points in a plot, each point is also a circle with its value as a
/// tooltip; beyond, only the lines (keeping the page light).
pub const CIRCLE_POINTS: usize = 400;

/// An SVG line plot of values in `[0, 1]` against round numbers, one polyline and (up to
/// [`CIRCLE_POINTS`] points) one labelled circle per point for each series, a legend naming
/// every series (by text, not colour alone), and a `<title>` and `<desc>` for screen readers.
pub fn line_plot(id: &str, title: &str, series: &[Series<'_>]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 240.0;
    const LEFT: f64 = 40.0;
    const RIGHT: f64 = 10.0;
    const TOP: f64 = 10.0;
    const BOTTOM: f64 = 30.0;
    let (mut lo, mut hi) = (u32::MAX, 0u32);
    for s in series {
        for &(x, _) in &s.points {
            lo = lo.min(x);
            hi = hi.max(x);
        }
    }
    let n_points: usize = series.iter().map(|s| s.points.len()).sum();
    let mut out = String::with_capacity(256 + n_points * 120);
    let _ = write!(
        out,
        "<figure class=\"plot\"><svg id=\"{}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-labelledby=\"{0}-t {0}-d\"><title id=\"{0}-t\">{}</title><desc id=\"{0}-d\">{} series, {n_points} points, rounds {} to {}</desc>",
        esc(id),
        esc(title),
        series.len(),
        if n_points == 0 { 0 } else { lo },
        hi
    );
    // Axes and grid at 0, 0.5, 1.
    for (v, label) in [(0.0, "0"), (0.5, "0.5"), (1.0, "1")] {
        let y = TOP + (1.0 - v) * (H - TOP - BOTTOM);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/><text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    if n_points == 0 {
        out.push_str("<text class=\"empty\" x=\"320\" y=\"120\">no values yet</text></svg>");
        let _ = write!(out, "<figcaption>{}</figcaption></figure>", esc(title));
        return out;
    }
    let span = f64::from((hi - lo).max(1));
    let x_of = |x: u32| LEFT + f64::from(x - lo) / span * (W - LEFT - RIGHT);
    let y_of = |v: f64| TOP + (1.0 - v.clamp(0.0, 1.0)) * (H - TOP - BOTTOM);
    let _ = write!(
        out,
        "<text class=\"xlab\" x=\"{LEFT}\" y=\"{:.1}\">round {lo}</text><text class=\"xlab end\" x=\"{:.1}\" y=\"{:.1}\">round {hi}</text>",
        H - 8.0,
        W - RIGHT,
        H - 8.0
    );
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let dash = DASHES[(i / PALETTE.len()) % DASHES.len()];
        let name = esc(s.name);
        let mut points = String::with_capacity(s.points.len() * 14);
        for &(x, v) in &s.points {
            let _ = write!(points, "{:.1},{:.1} ", x_of(x), y_of(v));
        }
        let dash_attr = if dash.is_empty() {
            String::new()
        } else {
            format!(" stroke-dasharray=\"{dash}\"")
        };
        let _ = write!(
            out,
            "<g class=\"series\" data-facility=\"{name}\"><polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash_attr} points=\"{}\"/>",
            points.trim_end()
        );
        for &(x, v) in s.points.iter().filter(|_| n_points <= CIRCLE_POINTS) {
            let _ = write!(
                out,
                "<circle class=\"pt\" data-facility=\"{name}\" data-round=\"{x}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{name}, round {x}: {v:.4}</title></circle>",
                x_of(x),
                y_of(v)
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg><figcaption>");
    out.push_str(&esc(title));
    out.push_str("<ul class=\"legend\">");
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let dash = DASHES[(i / PALETTE.len()) % DASHES.len()];
        let _ = write!(
            out,
            "<li><svg class=\"swatch\" viewBox=\"0 0 24 8\" aria-hidden=\"true\"><line x1=\"0\" y1=\"4\" x2=\"24\" y2=\"4\" stroke=\"{colour}\" stroke-width=\"3\" stroke-dasharray=\"{dash}\"/></svg>{}</li>",
            esc(s.name)
        );
    }
    out.push_str("</ul></figcaption></figure>");
    out
}

/// A horizontal bar of `value` against `limit` (ε spent against a budget), with the figures
/// as text beside it and a word when the budget is (nearly) spent.
pub fn budget_bar(value: Option<f64>, limit: Option<f64>) -> String {
    match (value, limit) {
        (Some(v), Some(max)) if max > 0.0 => {
            let share = (v / max).clamp(0.0, 1.0);
            let (tone, word) = if v >= max {
                ("bad", "spent")
            } else if share >= 0.8 {
                ("warn", "nearly spent")
            } else {
                ("good", "within budget")
            };
            format!(
                "<span class=\"bar\"><svg viewBox=\"0 0 100 10\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{:.0} percent of the budget\"><rect class=\"track\" width=\"100\" height=\"10\"/><rect class=\"fill {tone}\" width=\"{:.1}\" height=\"10\"/></svg></span> ε {v:.2} of {max} <span class=\"status {tone}\">{word}</span>",
                share * 100.0,
                share * 100.0
            )
        }
        (Some(v), _) => format!("ε {v:.2}, no budget set"),
        _ => "not reported".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_in_text_and_attributes() {
        let name = "<script>alert(\"x\")</script>&'";
        assert_eq!(
            esc(name),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        let plot = line_plot(
            "p",
            "AUC",
            &[Series {
                name,
                points: vec![(1, 0.5)],
            }],
        );
        assert!(!plot.contains("<script>"), "{plot}");
        assert!(plot.contains("data-facility=\"&lt;script&gt;"), "{plot}");
        let frame = Frame {
            title: name,
            current: "/",
            nav: &[],
            acting_as: name,
            refresh_s: None,
        }
        .render("");
        assert!(!frame.contains("<script>"), "{frame}");
        assert_eq!(url_part("a b/<"), "a%20b%2F%3C");
    }

    #[test]
    fn a_plot_has_one_circle_per_point_and_names_each_series() {
        let plot = line_plot(
            "auc",
            "AUC",
            &[
                Series {
                    name: "kisumu",
                    points: vec![(1, 0.7), (2, 0.8)],
                },
                Series {
                    name: "nakuru",
                    points: vec![(2, 0.6)],
                },
            ],
        );
        assert_eq!(plot.matches("<circle").count(), 3);
        assert_eq!(
            plot.matches("data-facility=\"kisumu\" data-round").count(),
            2
        );
        assert!(plot.contains("<li>") && plot.contains("nakuru</li>"));
        assert!(line_plot("e", "AUC", &[]).contains("no values yet"));
    }

    #[test]
    fn budget_bars_say_in_words_where_a_facility_stands() {
        assert!(budget_bar(Some(1.0), Some(10.0)).contains("within budget"));
        assert!(budget_bar(Some(9.0), Some(10.0)).contains("nearly spent"));
        assert!(budget_bar(Some(10.0), Some(10.0)).contains(">spent<"));
        assert_eq!(budget_bar(None, None), "not reported");
        assert_eq!(budget_bar(Some(2.0), None), "ε 2.00, no budget set");
    }
}
