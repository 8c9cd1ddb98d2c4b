//! SVG plots of a [`Comparison`] (plotters' SVG backend, drawn into strings; the caller
//! writes the files): failures and CMA per policy, CMA and fragmentation over time,
//! IOTLB misses per device, and a memory-map heatmap over time.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::metrics::{Heatmap, RunMetrics};
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

/// Bars, one per policy, each labelled with its value.
fn bars(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    c: &Comparison,
    caption: &str,
    y_desc: &str,
    value: &Measure,
    part: Option<(&str, &Measure)>,
) -> Result<()> {
    let e = err("bars");
    let n = c.runs.len();
    let top = c.runs.iter().map(value).fold(0.0, f64::max).max(1.0) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(f(n as u64) - 0.5), 0f64..top)
        .map_err(&e)?;
    let names: Vec<&str> = c.runs.iter().map(|r| r.policy.name()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                // CAST: a small bar index.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                names.get(i as usize).map_or(String::new(), |s| (*s).to_owned())
            } else {
                String::new()
            }
        })
        .x_label_style((FONT, 11).into_font().transform(FontTransform::Rotate90))
        .x_desc("policy")
        .y_desc(y_desc)
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(&e)?;
    for (i, r) in c.runs.iter().enumerate() {
        let x = f(i as u64);
        let v = value(r);
        let col = color(r.policy);
        let bar = Rectangle::new([(x - 0.35, 0.0), (x + 0.35, v)], col.mix(0.45).filled());
        chart.draw_series(std::iter::once(bar)).map_err(&e)?;
        if let Some((_, part)) = part {
            let p = part(r);
            chart
                .draw_series(std::iter::once(Rectangle::new([(x - 0.35, 0.0), (x + 0.35, p)], col.filled())))
                .map_err(&e)?;
        }
        let label = if v >= 100.0 || v == v.trunc() { format!("{v:.0}") } else { format!("{v:.1}") };
        chart
            .draw_series(std::iter::once(Text::new(label, (x - 0.3, v + top * 0.02), (FONT, 12).into_font())))
            .map_err(&e)?;
    }
    if let Some((what, _)) = part {
        let grey = RGBColor(0x60, 0x60, 0x60);
        chart
            .draw_series(std::iter::once(Rectangle::new([(0.0, 0.0), (0.0, 0.0)], grey.mix(0.45).filled())))
            .map_err(&e)?
            .label("all")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], grey.mix(0.45).filled()));
        chart
            .draw_series(std::iter::once(Rectangle::new([(0.0, 0.0), (0.0, 0.0)], grey.filled())))
            .map_err(&e)?
            .label(what)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], grey.filled()));
        chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw().map_err(&e)?;
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
        bars(&left, c, "failed operations", "operations (count)", &total, Some(("contiguous", &contiguous)))?;
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
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(&e)?;
    Ok(())
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
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(&e)?;
        root.present().map_err(&e)?;
    }
    Ok(s)
}

/// Where one policy's buffers sat in physical memory over time: time down, address
/// across (the banks laid end to end), darker where more of a slice is held by buffers.
/// `None` when the run recorded no heatmap.
pub fn heatmap(c: &Comparison, policy: Policy) -> Result<Option<String>> {
    let e = err("heatmap");
    let Some(h) = c.runs.iter().find(|r| r.policy == policy).and_then(|r| r.heatmap.as_ref()) else {
        return Ok(None);
    };
    let rows = coarse_rows(h, 120);
    let total_gib = f(h.banks.iter().map(|(s, e)| e - s).sum()) / f64::from(1u32 << 30);
    let t_max = rows.last().map_or(1.0, |(t, _)| f(*t) / 60e9).max(1e-3);
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (1000, 620)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let caption = title(c, &format!("Buffer memory map over time, {policy}"));
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, (FONT, 18))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..total_gib, t_max..0f64)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("physical memory, banks end to end (GiB)")
            .y_desc("simulated time (min)")
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(&e)?;
        let width = total_gib / f(h.columns as u64);
        let mut prev_t = 0.0;
        let mut cells = Vec::new();
        for (t, row) in &rows {
            let t = f(*t) / 60e9;
            let mut i = 0;
            while i < row.len() {
                let level = row[i] / 125;
                let mut j = i + 1;
                while j < row.len() && row[j] / 125 == level {
                    j += 1;
                }
                if level > 0 {
                    let shade = 1.0 - f64::from(level) / 8.0;
                    // CAST: shade in 0..1, a colour channel.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let ch = |base: f64| (base + (255.0 - base) * shade) as u8;
                    let col = RGBColor(ch(20.0), ch(60.0), ch(160.0));
                    cells.push(Rectangle::new([(f(i as u64) * width, prev_t), (f(j as u64) * width, t)], col.filled()));
                }
                i = j;
            }
            prev_t = t;
        }
        chart.draw_series(cells).map_err(&e)?;
        let cap = chart.draw_series(std::iter::empty::<Rectangle<(f64, f64)>>()).map_err(&e)?;
        cap.label("share of each slice held by buffers: darker is more")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], RGBColor(20, 60, 160).filled()));
        chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw().map_err(&e)?;
        root.present().map_err(&e)?;
    }
    Ok(Some(s))
}

/// At most `max` rows: consecutive samples merged (the maximum per column).
fn coarse_rows(h: &Heatmap, max: usize) -> Vec<(u64, Vec<u16>)> {
    let per = h.rows.len().div_ceil(max).max(1);
    h.rows
        .chunks(per)
        .map(|chunk| {
            let t = chunk.last().map_or(0, |r| r.0);
            let mut row = vec![0u16; h.columns];
            for (_, r) in chunk {
                for (a, b) in row.iter_mut().zip(r) {
                    *a = (*a).max(*b);
                }
            }
            (t, row)
        })
        .collect()
}
