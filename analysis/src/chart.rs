//! PNG charts (plotters, bitmap backend) with an embedded font, so that they render
//! the same on every machine.

use std::path::Path;
use std::sync::Once;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// DejaVu Sans 2.37, from the `dejavu` crate (Bitstream Vera license, in the crate's
/// `assets/dejavu-fonts-ttf-2.37/LICENSE`).
fn font() -> &'static [u8] {
    dejavu::sans::regular()
}

const FAMILY: &str = "sans-serif";

/// Series colors: distinct, readable on white.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Makes the embedded font the `sans-serif` family of every chart.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, font()).is_err() {
            // The font is compiled in: failing to read it is a bug, caught by the tests.
            panic!("the embedded DejaVu Sans font is not a valid font");
        }
    });
}

/// The legend box, styled the same on every chart.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(position)
        .draw()
        .map_err(err)
}

fn err<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow!("chart: {error}")
}

/// One panel of a distribution chart: requests per replica for one configuration.
#[derive(Clone, Debug)]
pub struct BarPanel {
    pub title: String,
    pub bars: Vec<(String, u64)>,
    pub color: usize,
}

/// Bar charts of requests per replica, one panel per configuration, side by side (at
/// most `columns` per row), on a shared y scale, with the even share as a dashed line.
pub fn distribution_chart(
    path: &Path,
    title: &str,
    panels: &[BarPanel],
    columns: usize,
) -> anyhow::Result<()> {
    register_font();
    let columns = columns.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns).max(1);
    let size = (520 * columns as u32, 90 + 400 * rows as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FAMILY, 26).into_font()).map_err(err)?;
    let top = panels
        .iter()
        .flat_map(|p| p.bars.iter().map(|(_, c)| *c))
        .max()
        .unwrap_or(0)
        .max(1);
    let y_max = top + top / 6 + 1;
    for (area, panel) in root.split_evenly((rows, columns)).iter().zip(panels) {
        bar_panel(area, panel, y_max)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn bar_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &BarPanel,
    y_max: u64,
) -> anyhow::Result<()> {
    let n = panel.bars.len() as u32;
    let total: u64 = panel.bars.iter().map(|(_, c)| c).sum();
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        // Integer ranges of plotters include their end: segments 0..=n-1.
        .build_cartesian_2d((0..n.max(1) - 1).into_segmented(), 0u64..y_max)
        .map_err(err)?;
    let names: Vec<String> = panel.bars.iter().map(|(name, _)| name.clone()).collect();
    let label = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n as usize + 1)
        .x_label_formatter(&label)
        .light_line_style(TRANSPARENT)
        .y_desc("requests served")
        .x_desc("replica")
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(err)?;
    let fill = color(panel.color);
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .margin(if n > 4 { 8 } else { 24 })
                .style(fill.filled())
                .data(
                    panel
                        .bars
                        .iter()
                        .enumerate()
                        .map(|(i, (_, c))| (i as u32, *c)),
                ),
        )
        .map_err(err)?;
    let on_top = (FAMILY, 15)
        .into_font()
        .into_text_style(area)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(panel.bars.iter().enumerate().map(|(i, (_, c))| {
            let share = if total > 0 {
                100.0 * *c as f64 / total as f64
            } else {
                0.0
            };
            Text::new(
                format!("{c} ({share:.1}%)"),
                (SegmentValue::CenterOf(i as u32), *c + y_max / 100),
                on_top.clone(),
            )
        }))
        .map_err(err)?;
    if n > 0 && total > 0 {
        let even = total / n as u64;
        chart
            .draw_series(DashedLineSeries::new(
                [(SegmentValue::Exact(0), even), (SegmentValue::Last, even)],
                6,
                4,
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("even share: {even}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.mix(0.6)));
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    Ok(())
}

/// Load per replica at one N.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadPoint {
    pub n: usize,
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

impl LoadPoint {
    pub fn max_over_mean(&self) -> f64 {
        if self.mean > 0.0 {
            self.max / self.mean
        } else {
            0.0
        }
    }
}

/// One configuration across N.
#[derive(Clone, Debug)]
pub struct LoadSeries {
    pub label: String,
    pub points: Vec<LoadPoint>,
    pub color: usize,
}

fn n_range(series: &[LoadSeries]) -> (usize, usize) {
    let ns = series.iter().flat_map(|s| s.points.iter().map(|p| p.n));
    let lo = ns.clone().min().unwrap_or(1);
    let hi = ns.max().unwrap_or(lo + 1);
    (lo, hi.max(lo + 1))
}

/// Two panels: the average load per replica with the min–max band, and max/mean, vs N.
pub fn scalability_chart(path: &Path, title: &str, series: &[LoadSeries]) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FAMILY, 26).into_font()).map_err(err)?;
    let (upper, lower) = root.split_vertically(470);
    let (lo, hi) = n_range(series);
    let x_range = lo as f64 - 0.2..hi as f64 + 0.2;
    let ticks = hi - lo + 1;
    let n_label = |v: &f64| {
        if (v - v.round()).abs() < 1e-6 {
            format!("{}", v.round() as i64)
        } else {
            String::new()
        }
    };

    // Upper: load per replica.
    let y_top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.max))
        .fold(1.0f64, f64::max)
        * 1.3; // room for the legend above the lines
    let mut chart = ChartBuilder::on(&upper)
        .caption(
            "requests per replica: busiest and idlest replica (band) around the average",
            (FAMILY, 18),
        )
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(75)
        .build_cartesian_2d(x_range.clone(), 0.0..y_top)
        .map_err(err)?;
    let whole = |v: &f64| format!("{v:.0}");
    chart
        .configure_mesh()
        .x_labels(ticks)
        .x_label_formatter(&n_label)
        .y_label_formatter(&whole)
        .light_line_style(TRANSPARENT)
        .x_desc("replicas (N)")
        .y_desc("requests per replica")
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(err)?;
    // Widest band first, so that a narrow one stays visible on top of it.
    let mut by_width: Vec<&LoadSeries> = series.iter().collect();
    let width = |s: &LoadSeries| s.points.iter().map(|p| p.max - p.min).sum::<f64>();
    by_width.sort_by(|a, b| width(b).total_cmp(&width(a)));
    for s in by_width {
        let c = color(s.color);
        let band: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|p| (p.n as f64, p.max))
            .chain(s.points.iter().rev().map(|p| (p.n as f64, p.min)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, c.mix(0.22).filled())))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|p| (p.n as f64, p.max)),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!(
                "{}: busiest and idlest replica (max/mean ≤ {:.3})",
                s.label,
                s.points
                    .iter()
                    .map(LoadPoint::max_over_mean)
                    .fold(0.0, f64::max)
            ))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 18, y + 6)], c.mix(0.45).filled())
            });
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|p| (p.n as f64, p.min)),
                c.stroke_width(2),
            ))
            .map_err(err)?;
        for p in &s.points {
            chart
                .draw_series([
                    Circle::new((p.n as f64, p.max), 3, c.filled()),
                    Circle::new((p.n as f64, p.min), 3, c.filled()),
                ])
                .map_err(err)?;
        }
    }
    // The average is requests / N whatever the ring: one line for all.
    if let Some(s) = series.first() {
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|p| (p.n as f64, p.mean)),
                BLACK.stroke_width(2),
            ))
            .map_err(err)?
            .label("average (requests / N)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(2)));
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|p| Circle::new((p.n as f64, p.mean), 4, BLACK.filled())),
            )
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;

    // Lower: max/mean.
    max_over_mean_panel(&lower, "max / mean (1.0 = perfectly even)", series, None)?;
    root.present().map_err(err)?;
    Ok(())
}

/// max/mean vs N for every configuration; `y_cap` zooms in (series above it are left
/// out and named in the caption).
fn max_over_mean_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    series: &[LoadSeries],
    y_cap: Option<f64>,
) -> anyhow::Result<()> {
    let shown: Vec<&LoadSeries> = series
        .iter()
        .filter(|s| y_cap.is_none_or(|cap| s.points.iter().all(|p| p.max_over_mean() <= cap)))
        .collect();
    let (lo, hi) = n_range(series);
    let top = shown
        .iter()
        .flat_map(|s| s.points.iter().map(LoadPoint::max_over_mean))
        .fold(1.0f64, f64::max);
    let y_range = if y_cap.is_some() {
        let pad = ((top - 1.0) * 0.15).max(0.002);
        (1.0 - pad)..(top + pad)
    } else {
        let pad = ((top - 1.0) * 0.08).max(0.02);
        (1.0 - pad).min(0.95)..(top + pad)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(75)
        .build_cartesian_2d(lo as f64 - 0.2..hi as f64 + 0.2, y_range)
        .map_err(err)?;
    let n_label = |v: &f64| {
        if (v - v.round()).abs() < 1e-6 {
            format!("{}", v.round() as i64)
        } else {
            String::new()
        }
    };
    let y_label = |v: &f64| {
        if y_cap.is_some() {
            format!("{v:.3}")
        } else {
            format!("{v:.2}")
        }
    };
    chart
        .configure_mesh()
        .x_labels(hi - lo + 1)
        .x_label_formatter(&n_label)
        .y_label_formatter(&y_label)
        .light_line_style(TRANSPARENT)
        .x_desc("replicas (N)")
        .y_desc("max / mean")
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(DashedLineSeries::new(
            [(lo as f64 - 0.2, 1.0), (hi as f64 + 0.2, 1.0)],
            6,
            4,
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(err)?;
    for s in &shown {
        let c = color(s.color);
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|p| (p.n as f64, p.max_over_mean())),
                c.stroke_width(3),
            ))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(3)));
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|p| Circle::new((p.n as f64, p.max_over_mean()), 4, c.filled())),
            )
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// The comparison of configurations: max/mean vs N for all of them, and a zoom on
/// those within `zoom_cap`.
pub fn comparison_chart(
    path: &Path,
    title: &str,
    series: &[LoadSeries],
    key_space: &[LoadSeries],
    zoom_cap: f64,
) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FAMILY, 26).into_font()).map_err(err)?;
    let (upper, lower) = root.split_vertically(440);
    max_over_mean_panel(
        &upper,
        "max / mean of the requests per replica, every configuration",
        series,
        None,
    )?;
    let left_out: Vec<&str> = key_space
        .iter()
        .filter(|s| s.points.iter().any(|p| p.max_over_mean() > zoom_cap))
        .map(|s| s.label.as_str())
        .collect();
    let mut caption =
        "zoom: max / mean of the key-space shares (exact, no sampling noise)".to_owned();
    if !left_out.is_empty() {
        caption = format!("{caption}; off scale: {}", left_out.join(", "));
    }
    max_over_mean_panel(&lower, &caption, key_space, Some(zoom_cap))?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

    fn assert_png(path: &Path, width: u32, height: u32) {
        let bytes = std::fs::read(path).expect("chart written");
        assert!(
            bytes.len() > 1000,
            "{} is only {} bytes",
            path.display(),
            bytes.len()
        );
        assert_eq!(
            &bytes[..8],
            PNG_SIGNATURE,
            "{} is not a PNG",
            path.display()
        );
        // IHDR: width and height, big-endian, right after the chunk header.
        assert_eq!(&bytes[12..16], b"IHDR");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((w, h), (width, height));
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ringlb-chart-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn series() -> Vec<LoadSeries> {
        let point = |n: usize, min: f64, max: f64| LoadPoint {
            n,
            min,
            mean: 100.0 / n as f64,
            max,
        };
        vec![
            LoadSeries {
                label: "even".into(),
                points: vec![point(2, 49.0, 51.0), point(3, 33.0, 34.0)],
                color: 0,
            },
            LoadSeries {
                label: "skewed".into(),
                points: vec![point(2, 10.0, 90.0), point(3, 2.0, 96.0)],
                color: 1,
            },
        ]
    }

    #[test]
    fn a_distribution_chart_is_a_png() {
        let dir = temp_dir("bars");
        let path = dir.join("bars.png");
        let panels = [
            BarPanel {
                title: "default".into(),
                bars: vec![
                    ("Server1".into(), 34),
                    ("Server2".into(), 33),
                    ("Server3".into(), 33),
                ],
                color: 0,
            },
            BarPanel {
                title: "course".into(),
                bars: vec![
                    ("Server1".into(), 96),
                    ("Server2".into(), 2),
                    ("Server3".into(), 2),
                ],
                color: 1,
            },
        ];
        distribution_chart(&path, "A1 — test", &panels, 2).unwrap();
        assert_png(&path, 1040, 490);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn line_charts_are_pngs() {
        let dir = temp_dir("lines");
        scalability_chart(&dir.join("a2.png"), "A2 — test", &series()).unwrap();
        assert_png(&dir.join("a2.png"), 1000, 900);
        comparison_chart(&dir.join("a4.png"), "A4 — test", &series(), &series(), 1.1).unwrap();
        assert_png(&dir.join("a4.png"), 1000, 900);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn max_over_mean_of_a_point() {
        let p = LoadPoint {
            n: 3,
            min: 200.0,
            mean: 10_000.0 / 3.0,
            max: 9600.0,
        };
        assert!((p.max_over_mean() - 2.88).abs() < 1e-9);
        let empty = LoadPoint {
            n: 3,
            min: 0.0,
            mean: 0.0,
            max: 0.0,
        };
        assert_eq!(empty.max_over_mean(), 0.0);
    }
}
