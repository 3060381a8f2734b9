//! Two small SVG charts (grouped bars, lines over categories), log or linear y axis, written by
//! hand: the benchmark report needs no plotting dependency.

use std::fmt::Write as _;

/// One named series of values, one per category (`None`: no value, nothing drawn).
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Fill or stroke colour.
    pub color: &'static str,
    /// One value per category.
    pub values: Vec<Option<f64>>,
}

/// Colours of the two providers, the same in every chart.
pub const KVMOUNT: &str = "#2471a3";
/// See [`KVMOUNT`].
pub const AZURE: &str = "#c0392b";

/// The y axis: a log scale spanning whole decades, or linear from zero.
#[derive(Clone, Copy)]
pub enum Scale {
    /// Base-10 logarithmic.
    Log,
    /// Linear from zero.
    Linear,
}

const W: f64 = 900.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 70.0;

struct Axis {
    scale: Scale,
    lo: f64,
    hi: f64,
}

impl Axis {
    fn new(scale: Scale, series: &[Series]) -> Axis {
        let values = series
            .iter()
            .flat_map(|s| s.values.iter().flatten().copied());
        let (min, max) = values.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let max = if max > 0.0 { max } else { 1.0 };
        match scale {
            Scale::Log => {
                let min = if min > 0.0 && min < f64::MAX {
                    min
                } else {
                    1.0
                };
                Axis {
                    scale,
                    lo: min.min(max).log10().floor(),
                    hi: max.log10().ceil().max(min.log10().floor() + 1.0),
                }
            }
            Scale::Linear => {
                let step = nice_step(max);
                Axis {
                    scale,
                    lo: 0.0,
                    hi: (max / step).ceil() * step,
                }
            }
        }
    }

    /// Pixel row of `v`.
    fn y(&self, v: f64) -> f64 {
        let t = match self.scale {
            Scale::Log => (v.max(10f64.powf(self.lo)).log10() - self.lo) / (self.hi - self.lo),
            Scale::Linear => v / self.hi,
        };
        H - BOTTOM - t * (H - BOTTOM - TOP)
    }

    fn ticks(&self) -> Vec<f64> {
        match self.scale {
            Scale::Log => (self.lo as i32..=self.hi as i32)
                .map(|d| 10f64.powi(d))
                .collect(),
            Scale::Linear => {
                let step = nice_step(self.hi);
                (0..=((self.hi / step).round() as usize))
                    .map(|i| i as f64 * step)
                    .collect()
            }
        }
    }
}

/// A round tick step giving about five ticks up to `max`.
fn nice_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(mag * 10.0)
}

fn label(v: f64) -> String {
    if v >= 1.0 || v == 0.0 {
        format!("{v}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The frame, title, y grid and legend; returns the SVG so far and the y axis.
fn frame(title: &str, y_label: &str, scale: Scale, series: &[Series]) -> (String, Axis) {
    let axis = Axis::new(scale, series);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/><text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        W / 2.0,
        escape(title)
    );
    for t in axis.ticks() {
        let y = axis.y(t);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            label(t)
        );
    }
    let _ = write!(
        svg,
        "<text transform=\"translate(16 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        (TOP + H - BOTTOM) / 2.0,
        escape(y_label)
    );
    let mut x = LEFT;
    for s in series {
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"34\" width=\"14\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"43\">{}</text>",
            s.color,
            x + 18.0,
            escape(&s.label)
        );
        x += 28.0 + 7.0 * s.label.len() as f64;
    }
    (svg, axis)
}

fn category_labels(svg: &mut String, categories: &[String], center: impl Fn(usize) -> f64) {
    for (i, c) in categories.iter().enumerate() {
        // Two lines at most: the text before and after " / ".
        let (a, b) = c.split_once(" / ").unwrap_or((c, ""));
        let x = center(i);
        let _ = write!(
            svg,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
            H - BOTTOM + 16.0,
            escape(a),
            H - BOTTOM + 30.0,
            escape(b)
        );
    }
}

/// What a chart shows: its title, y axis, categories along x and the series over them.
pub struct Chart<'a> {
    /// Top line.
    pub title: &'a str,
    /// Beside the y axis.
    pub y_label: &'a str,
    /// Log or linear y.
    pub scale: Scale,
    /// The x positions, one label each (" / " splits a label over two lines).
    pub categories: &'a [String],
    /// One value per category in each.
    pub series: &'a [Series],
}

impl Chart<'_> {
    /// Grouped bars: one group per category, one bar per series.
    pub fn bars(&self) -> String {
        bars(self)
    }

    /// Lines over evenly spaced categories (a log x axis when the categories are decades);
    /// on a log axis a value below the lowest decade, 0 included, sits on the bottom line.
    pub fn lines(&self) -> String {
        lines(self)
    }
}

fn bars(c: &Chart) -> String {
    let (categories, series) = (c.categories, c.series);
    let (mut svg, axis) = frame(c.title, c.y_label, c.scale, series);
    let group = (W - LEFT - RIGHT) / categories.len().max(1) as f64;
    let bar = (group * 0.8) / series.len().max(1) as f64;
    for (si, s) in series.iter().enumerate() {
        for (ci, v) in s.values.iter().enumerate() {
            let Some(v) = v else { continue };
            let x = LEFT + ci as f64 * group + group * 0.1 + si as f64 * bar;
            let y = axis.y(*v);
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {}</title></rect>",
                bar - 2.0,
                (H - BOTTOM - y).max(0.0),
                s.color,
                escape(&s.label),
                label(*v)
            );
        }
    }
    category_labels(&mut svg, categories, |i| LEFT + (i as f64 + 0.5) * group);
    svg.push_str("</svg>\n");
    svg
}

fn lines(c: &Chart) -> String {
    let (categories, series) = (c.categories, c.series);
    let (mut svg, axis) = frame(c.title, c.y_label, c.scale, series);
    let step = (W - LEFT - RIGHT) / categories.len().max(1) as f64;
    let x = |i: usize| LEFT + (i as f64 + 0.5) * step;
    // Every second series is dashed, so one drawn over an equal one stays visible.
    for (i, s) in series.iter().enumerate() {
        let dash = if i % 2 == 1 { "8 5" } else { "none" };
        let points: Vec<(f64, f64)> = s
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (x(i), axis.y(v))))
            .collect();
        let path: Vec<String> = points
            .iter()
            .map(|(px, py)| format!("{px:.1},{py:.1}"))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2.5\" stroke-dasharray=\"{dash}\" points=\"{}\"/>",
            s.color,
            path.join(" ")
        );
        for (px, py) in points {
            let _ = write!(
                svg,
                "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"4\" fill=\"{}\"/>",
                s.color
            );
        }
    }
    category_labels(&mut svg, categories, x);
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> Vec<Series> {
        vec![
            Series {
                label: "a".into(),
                color: KVMOUNT,
                values: vec![Some(0.5), Some(20.0), None],
            },
            Series {
                label: "b <&>".into(),
                color: AZURE,
                values: vec![Some(3.0), Some(1500.0), Some(7.0)],
            },
        ]
    }

    #[test]
    fn charts_are_well_formed_and_escaped() {
        let cats: Vec<String> = ["1 / x", "10", "100"].map(String::from).into();
        let series = series();
        let chart = |scale| Chart {
            title: "t",
            y_label: "ms",
            scale,
            categories: &cats,
            series: &series,
        };
        for svg in [chart(Scale::Log).bars(), chart(Scale::Linear).lines()] {
            assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains("b &lt;&amp;&gt;") && !svg.contains("<&>"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
    }

    #[test]
    fn axes_cover_the_values() {
        let log = Axis::new(Scale::Log, &series());
        assert_eq!((log.lo, log.hi), (-1.0, 4.0));
        let lin = Axis::new(Scale::Linear, &series());
        assert!(lin.hi >= 1500.0 && lin.ticks().len() <= 7);
    }
}
