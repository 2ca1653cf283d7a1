//! PNG plots people would rather look at than tables: loss curves, Recall@K
//! curves, R@1 per run. Drawn with plotters, text in an embedded DejaVu Sans.
use crate::error::StageError;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// DejaVu Sans (its licence permits embedding), so plots need no system fonts.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn fonts() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

type PlotResult = crate::Result<()>;

fn err(e: impl std::fmt::Display) -> StageError {
    StageError::Plot(e.to_string())
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if (hi - lo).abs() < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    }
}

/// Colours that stay readable on white (Tableau 10): run `i` gets `PALETTE[i % 10]`.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of series `i`.
pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// One legend line: a sample of the series' stroke (dashed where the series is) and its name.
struct LegendEntry {
    label: String,
    color: RGBAColor,
    width: u32,
    dashed: bool,
    marker: bool,
}

/// Pixels a legend column needs for these labels (14 px text, about 7.5 px a character).
fn legend_width(labels: impl Iterator<Item = usize>) -> u32 {
    let longest = labels.max().unwrap_or(0);
    (56.0 + longest as f64 * 7.5).clamp(120.0, 420.0) as u32
}

/// Draws a legend into its own area (a column right of the plot, so it never covers data),
/// one entry per line from `top`, each with a sample of its line as drawn in the plot.
fn draw_legend(area: &Area<'_>, top: i32, entries: &[LegendEntry]) -> PlotResult {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let font = ("sans-serif", 14)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, e) in entries.iter().enumerate() {
        let y = top + 22 * i as i32;
        let style = e.color.stroke_width(e.width);
        if e.dashed {
            // The same 6-on, 4-off rhythm as the plotted series.
            for x in [4, 14, 24] {
                area.draw(&PathElement::new(vec![(x, y), (x + 6, y)], style))
                    .map_err(err)?;
            }
        } else {
            area.draw(&PathElement::new(vec![(4, y), (32, y)], style))
                .map_err(err)?;
        }
        if e.marker {
            area.draw(&Circle::new((18, y), 3, e.color.filled()))
                .map_err(err)?;
        }
        area.draw(&Text::new(e.label.clone(), (40, y), font.clone()))
            .map_err(err)?;
    }
    Ok(())
}

/// Width of the legend column of the loss plots.
const LOSS_LEGEND: u32 = 230;

/// The training loss per step, with a moving average over ~2% of the steps.
pub fn loss_curve(path: &Path, title: &str, points: &[(f64, f64)]) -> PlotResult {
    fonts();
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    draw_loss(&root, title, points)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The loss panel: the plot on the left, its legend in a column on the right.
fn draw_loss(root: &Area<'_>, title: &str, points: &[(f64, f64)]) -> PlotResult {
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let (plot, legend) = root.split_horizontally(root.dim_in_pixel().0 - LOSS_LEGEND);
    let (x0, x1) = bounds(points.iter().map(|p| p.0));
    let (y0, y1) = bounds(points.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0.max(0.0)..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("loss")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let raw = RGBColor(170, 190, 230);
    chart
        .draw_series(LineSeries::new(points.iter().copied(), raw.stroke_width(1)))
        .map_err(err)?;
    let w = (points.len() / 50).max(1);
    let smooth: Vec<(f64, f64)> = points
        .windows(w)
        .map(|win| {
            (
                win[win.len() - 1].0,
                win.iter().map(|p| p.1).sum::<f64>() / win.len() as f64,
            )
        })
        .collect();
    let line = color(0);
    chart
        .draw_series(LineSeries::new(smooth, line.stroke_width(2)))
        .map_err(err)?;
    let mut entries = vec![LegendEntry {
        label: "loss per step".into(),
        color: raw.to_rgba(),
        width: 1,
        dashed: false,
        marker: false,
    }];
    if w > 1 {
        entries.push(LegendEntry {
            label: format!("moving average ({w} steps)"),
            color: line.to_rgba(),
            width: 2,
            dashed: false,
            marker: false,
        });
    }
    draw_legend(&legend, 30, &entries)
}

/// The validation scores to draw under a loss curve.
#[derive(Debug, Clone, Copy)]
pub struct ValidationCurve<'a> {
    /// What was validated on (`holdout`, `test split`).
    pub label: &'a str,
    /// (step, Recall@1, MAP@R), both in 0..1.
    pub points: &'a [(f64, f64, f64)],
    /// The step whose weights were kept, marked when it is not simply the last.
    pub kept_step: Option<f64>,
}

/// The loss curve over a second panel with the validation Recall@1 and MAP@R per
/// evaluation; both legends stand in a column right of the plots, clear of the data.
pub fn training_curves(
    path: &Path,
    title: &str,
    points: &[(f64, f64)],
    validation: &ValidationCurve<'_>,
) -> PlotResult {
    fonts();
    let root = BitMapBackend::new(path, (900, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(480);
    draw_loss(&top, title, points)?;
    let bottom = bottom
        .titled(
            &format!("validation on the {}", validation.label),
            ("sans-serif", 18),
        )
        .map_err(err)?;
    let (plot, legend) = bottom.split_horizontally(bottom.dim_in_pixel().0 - LOSS_LEGEND);
    let (x0, x1) = bounds(points.iter().map(|p| p.0));
    let (lo, hi) = bounds(
        validation
            .points
            .iter()
            .flat_map(|p| [100.0 * p.1, 100.0 * p.2]),
    );
    let (y0, y1) = (lo.max(0.0), hi.min(100.0).max(lo + 1.0));
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0.max(0.0)..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("%")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let series = [
        (
            "Recall@1",
            color(3),
            validation
                .points
                .iter()
                .map(|p| (p.0, 100.0 * p.1))
                .collect::<Vec<_>>(),
        ),
        (
            "MAP@R",
            color(2),
            validation
                .points
                .iter()
                .map(|p| (p.0, 100.0 * p.2))
                .collect(),
        ),
    ];
    let mut entries = Vec::new();
    for (name, c, pts) in series {
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
        entries.push(LegendEntry {
            label: name.into(),
            color: c.to_rgba(),
            width: 2,
            dashed: false,
            marker: true,
        });
    }
    if let Some(step) = validation.kept_step {
        chart
            .draw_series(LineSeries::new(
                [(step, y0), (step, y1)],
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(err)?;
        entries.push(LegendEntry {
            label: format!("kept: step {step:.0}"),
            color: BLACK.mix(0.6),
            width: 1,
            dashed: false,
            marker: false,
        });
    }
    draw_legend(&legend, 30, &entries)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One Recall@K curve: a run, or the untrained network it started from.
#[derive(Debug, Clone)]
pub struct RecallCurve {
    /// The run's name.
    pub label: String,
    /// (K, Recall@K as a fraction).
    pub points: Vec<(usize, f64)>,
    /// The untrained baseline: drawn dashed, in the colour of its run.
    pub untrained: bool,
    /// An untrained baseline that several runs share (the same network, so the same
    /// curve): drawn once, dashed grey, instead of once per run on top of each other.
    pub shared: bool,
}

/// Recall@K against K (log scale) for one or more runs and their untrained
/// baselines. The recall axis spans the data (padded), not 0–100, so that
/// close runs stay apart. The legend stands in a column right of the plot (the
/// image grows with it), each entry drawn as its series is: solid or dashed.
pub fn recall_curves(path: &Path, title: &str, curves: &[RecallCurve]) -> PlotResult {
    fonts();
    let labels: Vec<String> = curves
        .iter()
        .map(|c| {
            if c.shared {
                "untrained (the same network for several runs)".to_string()
            } else if c.untrained {
                format!("{} (untrained)", c.label)
            } else {
                c.label.clone()
            }
        })
        .collect();
    let legend_w = legend_width(labels.iter().map(|l| l.chars().count()));
    let height = 500.max(80 + 22 * curves.len() as u32);
    let root = BitMapBackend::new(path, (620 + legend_w, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let (plot, legend) = root.split_horizontally(620);
    let kmax = curves
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(8)
        .max(2) as f64;
    let (lo, hi) = bounds(
        curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| 100.0 * p.1)),
    );
    let (lo, hi) = ((lo - 2.0).max(0.0), (hi + 2.0).min(100.0));
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..kmax * 1.2).log_scale(), lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("K")
        .x_label_formatter(&|k| format!("{k:.0}"))
        .y_desc("Recall@K (%)")
        .y_label_formatter(&|r| format!("{r:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let mut trained = 0;
    let mut entries = Vec::new();
    for (c, label) in curves.iter().zip(labels) {
        // A baseline takes the colour of the run drawn just before it.
        let i = if c.untrained {
            trained.max(1) - 1
        } else {
            trained
        };
        if !c.untrained {
            trained += 1;
        }
        let rgb = if c.shared {
            RGBColor(110, 110, 110)
        } else {
            color(i)
        };
        let pts: Vec<(f64, f64)> = c
            .points
            .iter()
            .map(|&(k, r)| (k as f64, 100.0 * r))
            .collect();
        if c.untrained {
            chart
                .draw_series(DashedLineSeries::new(
                    pts.clone(),
                    6,
                    4,
                    rgb.stroke_width(2),
                ))
                .map_err(err)?;
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), rgb.stroke_width(2)))
                .map_err(err)?;
        }
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, rgb.filled())))
            .map_err(err)?;
        entries.push(LegendEntry {
            label,
            color: rgb.to_rgba(),
            width: 2,
            dashed: c.untrained,
            marker: true,
        });
    }
    draw_legend(&legend, 30, &entries)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One horizontal bar per run: (label, value in 0..1, optional std). The run's
/// name stands left of its bar, the value (± std, drawn as an error bar) right
/// of it, both in black on white. The axis ends at 100 % at most; a value near
/// the end is written into the margin right of the axis.
pub fn bars(
    path: &Path,
    title: &str,
    metric: &str,
    rows: &[(String, f64, Option<f64>)],
) -> PlotResult {
    fonts();
    let height = 130 + 34 * rows.len() as u32;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let longest = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(4);
    // Room for the names on the left, about 7.5 px a character at 14 px.
    let label_px = (longest as f64 * 7.5).clamp(60.0, 420.0) as u32 + 16;
    let n = rows.len().max(1) as f64;
    let top = rows
        .iter()
        .map(|r| 100.0 * (r.1 + r.2.unwrap_or(0.0)))
        .fold(0.0f64, f64::max);
    // A little room right of the longest bar, never past 100 %.
    let xmax = (top * 1.15).clamp(10.0, 100.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        // The values of bars that reach the end stand in this margin.
        .margin_right(110)
        .x_label_area_size(40)
        .y_label_area_size(label_px)
        .build_cartesian_2d(0f64..xmax, 0f64..n)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc(metric)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let text = |anchor_h| {
        ("sans-serif", 14)
            .into_font()
            .color(&BLACK)
            .pos(plotters::style::text_anchor::Pos::new(
                anchor_h,
                plotters::style::text_anchor::VPos::Center,
            ))
    };
    use plotters::style::text_anchor::HPos;
    for (i, (label, v, sd)) in rows.iter().enumerate() {
        // First row on top; the bar spans the middle 70 % of its slot.
        let mid = n - 0.5 - i as f64;
        let (v, sd) = (100.0 * v, sd.map(|s| 100.0 * s));
        let fill = color(i).mix(0.55);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, mid - 0.35), (v.min(xmax), mid + 0.35)],
                fill.filled(),
            )))
            .map_err(err)?;
        let mut end = v;
        if let Some(sd) = sd {
            end = v + sd;
            let whisker = [(v - sd).max(0.0), (v + sd).min(xmax)];
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(whisker[0], mid), (whisker[1], mid)],
                    BLACK.stroke_width(2),
                )))
                .map_err(err)?;
            for x in whisker {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(x, mid - 0.15), (x, mid + 0.15)],
                        BLACK.stroke_width(2),
                    )))
                    .map_err(err)?;
            }
        }
        let value = match sd {
            Some(sd) => format!("{v:.2} ± {sd:.2}"),
            None => format!("{v:.2}"),
        };
        // In pixels, so that text past the axis' end lands in the right margin.
        let (px, py) = chart.backend_coord(&(end.min(xmax), mid));
        root.draw(&Text::new(value, (px + 6, py), text(HPos::Left)))
            .map_err(err)?;
        // The name goes in the label area, left of the axis.
        let (px, py) = chart.backend_coord(&(0.0, mid));
        root.draw(&Text::new(label.clone(), (px - 8, py), text(HPos::Right)))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_written_as_png() {
        let tmp = tempfile::tempdir().unwrap();
        let pts: Vec<(f64, f64)> = (0..200)
            .map(|i| (i as f64, 1.0 / (1.0 + i as f64 * 0.05)))
            .collect();
        let a = tmp.path().join("loss.png");
        loss_curve(&a, "loss", &pts).unwrap();
        let b = tmp.path().join("recall.png");
        recall_curves(
            &b,
            "recall",
            &[
                RecallCurve {
                    label: "run".into(),
                    points: vec![(1, 0.4), (2, 0.55), (4, 0.7), (8, 0.8)],
                    untrained: false,
                    shared: false,
                },
                RecallCurve {
                    label: "run".into(),
                    points: vec![(1, 0.2), (2, 0.3), (4, 0.4), (8, 0.5)],
                    untrained: true,
                    shared: false,
                },
            ],
        )
        .unwrap();
        let c = tmp.path().join("r1.png");
        bars(
            &c,
            "R@1",
            "R@1 (%)",
            &[("a".into(), 0.4, Some(0.01)), ("b".into(), 0.5, None)],
        )
        .unwrap();
        let d = tmp.path().join("loss_val.png");
        let val: Vec<(f64, f64, f64)> = (0..5)
            .map(|i| (50.0 * i as f64, 0.3 + 0.1 * i as f64, 0.1 + 0.05 * i as f64))
            .collect();
        training_curves(
            &d,
            "loss",
            &pts,
            &ValidationCurve {
                label: "holdout",
                points: &val,
                kept_step: Some(150.0),
            },
        )
        .unwrap();
        assert_eq!(image::open(&d).unwrap().height(), 800);
        // A sweep: a dozen runs with long names and their baselines; bars near 100 %.
        let e = tmp.path().join("recall_sweep.png");
        let curves: Vec<RecallCurve> = (0..12)
            .flat_map(|i| {
                let label = format!("sweep[train.loss.name=loss{i},train.seed={i}]");
                let r = 0.5 + 0.04 * i as f64;
                [
                    RecallCurve {
                        label: label.clone(),
                        points: vec![(1, r), (2, r + 0.05), (4, r + 0.08), (8, r + 0.1)],
                        untrained: false,
                        shared: false,
                    },
                    RecallCurve {
                        label,
                        points: vec![(1, 0.2), (2, 0.3), (4, 0.4), (8, 0.5)],
                        untrained: true,
                        shared: false,
                    },
                ]
            })
            .collect();
        recall_curves(&e, "recall", &curves).unwrap();
        assert!(image::open(&e).unwrap().height() >= 80 + 22 * 24);
        // A baseline shared by the runs of a sweep is drawn once, in grey.
        let grey = |path: &Path| {
            image::open(path)
                .unwrap()
                .to_rgb8()
                .pixels()
                .filter(|p| p.0 == [110, 110, 110])
                .count()
        };
        let mut shared: Vec<RecallCurve> = curves.iter().take(3).cloned().collect();
        shared[1].shared = true;
        let g = tmp.path().join("recall_shared.png");
        recall_curves(&g, "recall", &shared).unwrap();
        let drawn_grey = grey(&g);
        shared[1].shared = false;
        recall_curves(&g, "recall", &shared).unwrap();
        // (Anti-aliased text and grid lines have a few pixels of that grey too.)
        assert!(
            drawn_grey > 3 * grey(&g) + 100,
            "the shared baseline is grey: {drawn_grey} grey pixels, {} without it",
            grey(&g)
        );
        let f = tmp.path().join("r1_high.png");
        bars(
            &f,
            "R@1",
            "R@1 (%)",
            &[("a".into(), 0.999, Some(0.004)), ("b".into(), 0.97, None)],
        )
        .unwrap();
        for p in [&a, &b, &c, &d, &e, &f] {
            if let Some(dir) = std::env::var_os("DML_PLOTS_PREVIEW") {
                std::fs::copy(p, std::path::Path::new(&dir).join(p.file_name().unwrap())).unwrap();
            }
        }
        for p in [a, b, c, d, e, f] {
            let img = image::open(&p).unwrap();
            assert!(img.width() >= 740, "{}", p.display());
            // Not blank: some pixels are not white.
            let rgb = img.to_rgb8();
            assert!(rgb.pixels().filter(|px| px.0 != [255, 255, 255]).count() > 1000);
        }
    }
}
