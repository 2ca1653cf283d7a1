//! PNG plots people would rather look at than tables: loss curves, Recall@K
//! curves, R@1 per run. Drawn with plotters, text in an embedded DejaVu Sans.
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

type PlotResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn err(e: impl std::fmt::Display) -> Box<dyn std::error::Error + Send + Sync> {
    e.to_string().into()
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

/// The training loss per step, with a moving average over ~2% of the steps.
pub fn loss_curve(path: &Path, title: &str, points: &[(f64, f64)]) -> PlotResult {
    fonts();
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    draw_loss(&root, title, points)?;
    root.present().map_err(err)?;
    Ok(())
}

fn draw_loss(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    points: &[(f64, f64)],
) -> PlotResult {
    let (x0, x1) = bounds(points.iter().map(|p| p.0));
    let (y0, y1) = bounds(points.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
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
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            RGBColor(170, 190, 230).stroke_width(1),
        ))
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
    chart
        .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))
        .map_err(err)?
        .label(format!("moving average ({w} steps)"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    Ok(())
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

/// The loss curve over a second panel with the validation Recall@1 and MAP@R per evaluation.
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
    let (x0, x1) = bounds(points.iter().map(|p| p.0));
    let (lo, hi) = bounds(
        validation
            .points
            .iter()
            .flat_map(|p| [100.0 * p.1, 100.0 * p.2]),
    );
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            format!("validation on the {}", validation.label),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0.max(0.0)..x1, lo.max(0.0)..hi.min(100.0).max(lo + 1.0))
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
            RED,
            validation
                .points
                .iter()
                .map(|p| (p.0, 100.0 * p.1))
                .collect::<Vec<_>>(),
        ),
        (
            "MAP@R",
            GREEN,
            validation
                .points
                .iter()
                .map(|p| (p.0, 100.0 * p.2))
                .collect(),
        ),
    ];
    for (name, color, pts) in series {
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    if let Some(step) = validation.kept_step {
        let (y0, y1) = (lo.max(0.0), hi.min(100.0).max(lo + 1.0));
        chart
            .draw_series(LineSeries::new(
                [(step, y0), (step, y1)],
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("kept: step {step:.0}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.6)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Recall@K against K (log scale) for one or more runs: (label, [(K, recall)]).
pub fn recall_curves(path: &Path, title: &str, runs: &[(String, Vec<(usize, f64)>)]) -> PlotResult {
    fonts();
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let kmax = runs
        .iter()
        .flat_map(|r| r.1.iter().map(|p| p.0))
        .max()
        .unwrap_or(8)
        .max(2) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..kmax * 1.2).log_scale(), 0f64..100f64)
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
    for (i, (label, pts)) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = pts.iter().map(|&(k, r)| (k as f64, 100.0 * r)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One horizontal bar per run: (label, value in 0..1, optional std).
pub fn bars(
    path: &Path,
    title: &str,
    metric: &str,
    rows: &[(String, f64, Option<f64>)],
) -> PlotResult {
    fonts();
    let height = 120 + 32 * rows.len() as u32;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = rows.len().max(1) as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(10)
        .build_cartesian_2d(0f64..100f64, 0i32..n)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc(metric)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, (label, v, sd)) in rows.iter().enumerate() {
        let y = n - 1 - i as i32;
        let color = Palette99::pick(i).mix(0.7);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y), (100.0 * v, y + 1)],
                color.filled(),
            )))
            .map_err(err)?;
        let text = match sd {
            Some(sd) => format!("{label}  {:.2} ± {:.2}", 100.0 * v, 100.0 * sd),
            None => format!("{label}  {:.2}", 100.0 * v),
        };
        chart
            .draw_series(std::iter::once(Text::new(
                text,
                (1.0, y),
                ("sans-serif", 14).into_font(),
            )))
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
            &[("run".into(), vec![(1, 0.4), (2, 0.55), (4, 0.7), (8, 0.8)])],
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
        for p in [a, b, c, d] {
            let img = image::open(&p).unwrap();
            assert!(img.width() == 900, "{}", p.display());
            // Not blank: some pixels are not white.
            let rgb = img.to_rgb8();
            assert!(rgb.pixels().filter(|px| px.0 != [255, 255, 255]).count() > 1000);
        }
    }
}
