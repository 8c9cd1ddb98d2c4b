//! SVG plots of a [`Comparison`] (plotters' SVG backend, drawn into strings; the caller
//! writes the files): failures and CMA per policy, CMA and fragmentation over time,
//! IOTLB misses per device, and a memory-map heatmap over time.

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::metrics::RunMetrics;
use crate::policy::Policy;
use crate::report::Comparison;

/// A plot could not be drawn.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("plotting {what}: {reason}")]
pub struct PlotError {
    /// Which plot.
    pub what: &'static str,
    /// The backend's message.
    pub reason: String,
}

type Result<T> = std::result::Result<T, PlotError>;

const FONT: &str = "sans-serif";

fn err<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> PlotError {
    move |e| PlotError { what, reason: format!("{e:?}") }
}

/// The colour of a policy in every plot.
fn color(p: Policy) -> RGBColor {
    match p {
        Policy::Deferred => RGBColor(0x1f, 0x77, 0xb4),
        Policy::DeferredNoMigrate => RGBColor(0x17, 0xbe, 0xcf),
        Policy::EagerSystem => RGBColor(0xd6, 0x27, 0x28),
        Policy::EagerContiguous => RGBColor(0xff, 0x7f, 0x0e),
        Policy::HintHeap => RGBColor(0x94, 0x67, 0xbd),
    }
}

// CAST (this file): plot coordinates are f64 from counts and byte totals far below 2^52.
#[allow(clippy::cast_precision_loss)]
fn f(n: u64) -> f64 {
    n as f64
}

fn mib(n: u64) -> f64 {
    f(n) / 1_048_576.0
}

fn title(c: &Comparison, what: &str) -> String {
    format!("{what}: {} on {} (seed {})", c.scenario, c.platform, c.seed)
}

/// A number read from a run.
type Measure = dyn Fn(&RunMetrics) -> f64;

/// A chart with linear axes.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A legend entry with no data of its own: a square of `style`.
fn swatch(chart: &mut Chart<'_, '_>, label: &str, style: ShapeStyle) -> Result<()> {
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
        .map_err(err("legend"))?
        .label(label)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], style));
    Ok(())
}

/// Draws the legend of `chart` at `position`, on a white box.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    let e = err("legend");
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(e)
}

/// Horizontal bars, one per policy (the first at the top), each labelled with its value.
fn bars(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    c: &Comparison,
    caption: &str,
    x_desc: &str,
    value: &Measure,
    part: Option<(&str, &Measure)>,
) -> Result<()> {
    let e = err("bars");
    let n = c.runs.len();
    let top = c.runs.iter().map(value).fold(0.0, f64::max).max(1.0) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(140)
        .build_cartesian_2d(0f64..top, -0.5f64..(f(n as u64) - 0.5))
        .map_err(&e)?;
    // Policy i is drawn at y = n - 1 - i, so the first is at the top.
    let y_of = |i: usize| f((n - 1 - i) as u64);
    let names: Vec<&str> = c.runs.iter().map(|r| r.policy.name()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|y| {
            let k = y.round();
            if (y - k).abs() < 1e-6 && k >= 0.0 {
                // CAST: a small bar index.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let from_top = n.checked_sub(1 + k as usize);
                from_top.and_then(|i| names.get(i)).map_or(String::new(), |s| (*s).to_owned())
            } else {
                String::new()
            }
        })
        .y_label_style((FONT, 13))
        .x_desc(x_desc)
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(&e)?;
    for (i, r) in c.runs.iter().enumerate() {
        let y = y_of(i);
        let v = value(r);
        let col = color(r.policy);
        let bar = Rectangle::new([(0.0, y - 0.35), (v, y + 0.35)], col.mix(0.45).filled());
        chart.draw_series(std::iter::once(bar)).map_err(&e)?;
        if let Some((_, part)) = part {
            let p = part(r);
            chart
                .draw_series(std::iter::once(Rectangle::new([(0.0, y - 0.35), (p, y + 0.35)], col.filled())))
                .map_err(&e)?;
        }
        let label = if v >= 100.0 || v == v.trunc() { format!("{v:.0}") } else { format!("{v:.1}") };
        chart
            .draw_series(std::iter::once(Text::new(label, (v + top * 0.01, y + 0.12), (FONT, 12).into_font())))
            .map_err(&e)?;
    }
    if let Some((what, _)) = part {
        let grey = RGBColor(0x60, 0x60, 0x60);
        swatch(&mut chart, "all", grey.mix(0.45).filled())?;
        swatch(&mut chart, what, grey.filled())?;
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    Ok(())
}

/// Failures (all, and those caused by contiguity) and the CMA peak, per policy.
pub fn failures_and_cma(c: &Comparison) -> Result<String> {
    let e = err("failures and CMA");
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (1000, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let root = root.titled(&title(c, "Failures and CMA"), (FONT, 20)).map_err(&e)?;
        let (left, right) = root.split_horizontally(500);
        let total = |r: &RunMetrics| f(r.total_failures());
        let contiguous = |r: &RunMetrics| f(r.contiguous_failures);
        bars(&left, c, "failed operations", "operations (count)", &total, Some(("caused by contiguity", &contiguous)))?;
        let cma = |r: &RunMetrics| mib(r.cma_peak_bytes);
        bars(&right, c, "peak CMA in use by buffers", "CMA (MiB)", &cma, None)?;
        root.present().map_err(&e)?;
    }
    Ok(s)
}

/// One line per policy over simulated time.
fn lines(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    c: &Comparison,
    caption: &str,
    y_desc: &str,
    value: &dyn Fn(&crate::metrics::Sample) -> f64,
) -> Result<()> {
    let e = err("lines");
    let minutes = |t: u64| f(t) / 60e9;
    let t_max = minutes(c.sim_time_ns).max(1e-3);
    let top = c.runs.iter().flat_map(|r| r.series.iter().map(value)).fold(0.0, f64::max).max(1e-3) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..top)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .x_desc("simulated time (min)")
        .y_desc(y_desc)
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(&e)?;
    for r in &c.runs {
        let col = color(r.policy);
        let points: Vec<(f64, f64)> = r.series.iter().map(|s| (minutes(s.t_ns), value(s))).collect();
        chart
            .draw_series(LineSeries::new(points, col.stroke_width(2)))
            .map_err(&e)?
            .label(r.policy.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], col.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// CMA in use by buffers and the fragmentation index over simulated time, per policy.
pub fn over_time(c: &Comparison) -> Result<String> {
    let e = err("over time");
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (1000, 760)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let root = root.titled(&title(c, "Memory over time"), (FONT, 20)).map_err(&e)?;
        let (top, bottom) = root.split_vertically(370);
        lines(&top, c, "CMA in use by buffers", "CMA (MiB)", &|s| mib(s.cma_bytes))?;
        lines(
            &bottom,
            c,
            "fragmentation index at 2 MiB (0: none, 1: no free 2 MiB block)",
            "unusable free space index",
            &|s| s.frag_index,
        )?;
        root.present().map_err(&e)?;
    }
    Ok(s)
}

/// IOTLB misses per MiB mapped, per device behind an IOMMU and per policy (log scale).
pub fn iotlb(c: &Comparison) -> Result<String> {
    let e = err("IOTLB");
    let mut devices: Vec<&str> =
        c.runs.iter().flat_map(|r| r.devices.iter()).filter(|d| d.iommu.is_some()).map(|d| d.device.as_str()).collect();
    devices.sort_unstable();
    devices.dedup();
    let k = c.runs.len().max(1);
    let slots = devices.len() * (k + 1);
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (1000, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let top = c.runs.iter().flat_map(|r| r.devices.iter().map(|d| d.misses_per_mib())).fold(1.0, f64::max) * 3.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(title(c, "IOTLB misses per MiB (one cold pass per mapping)"), (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(f(slots.max(1) as u64) - 0.5), (0.1f64..top).log_scale())
            .map_err(&e)?;
        let centre = |i: usize| f((i * (k + 1)) as u64) + f(k as u64 - 1) / 2.0;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(slots.max(1) * 2)
            .x_label_formatter(&|x| {
                devices
                    .iter()
                    .enumerate()
                    .find(|(i, _)| (centre(*i) - x).abs() < 0.26)
                    .map_or(String::new(), |(_, d)| (*d).to_owned())
            })
            .x_desc("device (behind an IOMMU)")
            .y_desc("IOTLB misses per MiB (log)")
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(&e)?;
        for (j, r) in c.runs.iter().enumerate() {
            let col = color(r.policy);
            let bars: Vec<Rectangle<(f64, f64)>> = devices
                .iter()
                .enumerate()
                .filter_map(|(i, d)| {
                    let v = r.device(d)?.misses_per_mib();
                    let x = f((i * (k + 1) + j) as u64);
                    (v > 0.0).then(|| Rectangle::new([(x - 0.4, 0.1), (x + 0.4, v)], col.filled()))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(&e)?
                .label(r.policy.name())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], col.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present().map_err(&e)?;
    }
    Ok(s)
}

/// Who held physical memory over time for one policy: time down, address across (the
/// banks laid end to end); blue where buffers are, grey where the other users of memory
/// are, white where it is free; CMA areas are marked under the axis. `None` when the run
/// recorded no heatmap.
pub fn heatmap(c: &Comparison, policy: Policy) -> Result<Option<String>> {
    let e = err("heatmap");
    let Some(h) = c.runs.iter().find(|r| r.policy == policy).and_then(|r| r.heatmap.as_ref()) else {
        return Ok(None);
    };
    let gib = |b: u64| f(b) / f64::from(1u32 << 30);
    let total = gib(h.banks.iter().map(|(s, e)| e - s).sum());
    let t_max = h.rows.last().map_or(1.0, |r| f(r.t_ns) / 60e9).max(1e-3);
    let band = t_max * 0.03;
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (1000, 620)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let caption = title(c, &format!("Memory map over time, {policy}"));
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, (FONT, 18))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..total, (t_max + band)..0f64)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("physical memory, banks end to end (GiB)")
            .y_desc("simulated time (min)")
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(&e)?;
        let width = total / f(h.columns as u64);
        let mut cells = Vec::new();
        let mut prev_t = 0.0;
        for row in &h.rows {
            let t = f(row.t_ns) / 60e9;
            // Shares in eighths, and runs of equal cells drawn as one rectangle.
            let level = |v: u16| (u32::from(v) * 8 + 500) / 1000;
            let cells_of: Vec<(u32, u32)> =
                row.buffers.iter().zip(&row.others).map(|(b, o)| (level(*b), level(*o))).collect();
            let mut i = 0;
            while i < cells_of.len() {
                let (b, o) = cells_of[i];
                let mut j = i + 1;
                while j < cells_of.len() && cells_of[j] == (b, o) {
                    j += 1;
                }
                if (b, o) != (0, 0) {
                    let (b, o) = (f64::from(b) / 8.0, f64::from(o) / 8.0);
                    // CAST: channel values in 0..=255.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let ch = |blue: f64, grey: f64| {
                        (255.0 - b * (255.0 - blue) - o * (255.0 - grey)).clamp(0.0, 255.0) as u8
                    };
                    let col = RGBColor(ch(20.0, 150.0), ch(60.0, 150.0), ch(200.0, 150.0));
                    let (x0, x1) = (f(i as u64) * width, f(j as u64) * width);
                    cells.push(Rectangle::new([(x0, prev_t), (x1, t.max(prev_t + 1e-9))], col.filled()));
                }
                i = j;
            }
            prev_t = t;
        }
        chart.draw_series(cells).map_err(&e)?;
        let orange = RGBColor(0xff, 0x7f, 0x0e);
        let cma =
            h.cma.iter().map(|(a, b)| Rectangle::new([(gib(*a), t_max), (gib(*b), t_max + band)], orange.filled()));
        chart
            .draw_series(cma)
            .map_err(&e)?
            .label("CMA area")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], orange.filled()));
        swatch(&mut chart, "buffers", RGBColor(20, 60, 200).filled())?;
        swatch(&mut chart, "other users of memory", RGBColor(150, 150, 150).filled())?;
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        root.present().map_err(&e)?;
    }
    Ok(Some(s))
}
