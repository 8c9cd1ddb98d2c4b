//! The text report (insta snapshot) and the goals, on the tiny exact-test trace.

use dmaplace_core::Platform;
use dmaplace_eval::report::{self, Comparison};
use dmaplace_eval::trace::Trace;
use dmaplace_eval::{Policy, RunOptions, plot, run};

fn comparison() -> Comparison {
    let platform = Platform::from_toml("tiny.toml", include_str!("data/tiny.toml")).unwrap();
    let trace = Trace::parse("tiny.trace", include_str!("data/tiny.trace")).unwrap();
    let opts = RunOptions { heatmap: true, ..RunOptions::default() };
    let runs = Policy::ALL.iter().map(|p| run(&trace, &platform, *p, &opts, &mut |_| {}).unwrap()).collect();
    Comparison {
        scenario: "tiny.trace".into(),
        platform: platform.name.clone(),
        seed: 1,
        events: trace.ops.len() as u64,
        sim_time_ns: trace.duration_ns(),
        params: trace.header.meta.clone(),
        runs,
    }
}

#[test]
fn text_report() {
    insta::assert_snapshot!(report::text(&comparison()));
}

#[test]
fn goals_are_measured_not_assumed() {
    let goals = report::goals(&comparison());
    let verdicts: Vec<(&str, Option<bool>)> = goals.iter().map(|g| (g.goal.as_str(), g.met)).collect();
    assert_eq!(
        verdicts,
        [
            // 0 contiguous failures against 2 (eager-system) and 0 (hint-heap): 0 <= 0.
            ("contiguous failures <= 1/10 of eager-system", Some(true)),
            ("contiguous failures <= 1/10 of hint-heap", Some(true)),
            // The move held both backings in CMA: 16 MiB against eager-contiguous's 10.
            ("CMA peak <= 1/2 of eager-contiguous", Some(false)),
            // 520 entries against an ideal of 9: the texture's 1 MiB banks.
            ("IOMMU entries/MiB of `gpu` within 1.1x of ideal", Some(false)),
        ]
    );
    assert!(goals[2].text.ends_with("NOT met: 3.20x the bound"), "{}", goals[2].text);
}

#[test]
fn plots_are_svg_with_titles_axes_and_legends() {
    let c = comparison();
    for (svg, words) in [
        (
            plot::failures_and_cma(&c).unwrap(),
            &["Failures and CMA", "operations (count)", "CMA (MiB)", "caused by contiguity"][..],
        ),
        (plot::over_time(&c).unwrap(), &["simulated time (min)", "CMA (MiB)", "deferred", "hint-heap"][..]),
        (plot::iotlb(&c).unwrap(), &["IOTLB misses per MiB", "gpu", "eager-system"][..]),
        (plot::heatmap(&c, Policy::Deferred).unwrap().unwrap(), &["physical memory", "simulated time (min)"][..]),
    ] {
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for w in words {
            assert!(svg.contains(w), "missing {w:?}");
        }
    }
}
