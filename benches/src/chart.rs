//! The SVG chart of the ratios (plotters, SVG backend only): one horizontal bar per comparison,
//! drawn from 1.0 (parity) to txheap's ratio on a log scale, coloured by whether its goal is
//! met, with a black tick at the goal.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::BoxResult;

/// One comparison to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// e.g. `W1 vs lmdb`.
    pub label: String,
    /// txheap's figure ÷ the other row's.
    pub ratio: f64,
    /// The goal's minimum ratio, if the issue sets one.
    pub goal: Option<f64>,
    /// Whether the other row is a machine limit (drawn grey when it has no goal).
    pub limit: bool,
}

/// The x range: powers of ten around every ratio, every goal and 1.0.
pub fn x_range(bars: &[Bar]) -> (f64, f64) {
    let values = bars
        .iter()
        .flat_map(|b| [Some(b.ratio), b.goal])
        .flatten()
        .filter(|v| v.is_finite() && *v > 0.0)
        .chain([1.0]);
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    (
        10f64.powf(lo.log10().floor().min(-1.0)),
        10f64.powf(hi.log10().ceil().max(1.0)),
    )
}

/// Write the chart to `path`.
pub fn write_svg(path: &Path, title: &str, bars: &[Bar]) -> BoxResult<()> {
    let n = bars.len() as i32;
    if n == 0 {
        return Err("no ratios to chart".into());
    }
    let height = 130 + 30 * bars.len() as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = x_range(bars);
    // Bar k is drawn at y = n - 1 - k so the first bar is on top.
    let label_of = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(y) if (0..n).contains(y) => bars[(n - 1 - y) as usize].label.clone(),
        _ => String::new(),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .margin_right(60)
        .x_label_area_size(45)
        .y_label_area_size(220)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&label_of)
        .x_label_formatter(&|x| format!("{x}x"))
        .x_desc(
            "txheap ÷ row, log scale (right of 1: txheap faster). Green: goal met, red: not met, \
             black tick: goal; blue: peer without goal, grey: limit without goal",
        )
        .label_style(("sans-serif", 13))
        .draw()?;

    let green = RGBColor(46, 160, 67);
    let red = RGBColor(215, 58, 73);
    let blue = RGBColor(90, 130, 200);
    let grey = RGBColor(150, 150, 150);
    for (k, b) in bars.iter().enumerate() {
        let y = n - 1 - k as i32;
        let color = match b.goal {
            Some(g) if b.ratio >= g => green,
            Some(_) => red,
            None if b.limit => grey,
            None => blue,
        };
        let ratio = if b.ratio.is_finite() && b.ratio > 0.0 {
            b.ratio.clamp(lo, hi)
        } else {
            lo
        };
        let mut rect = Rectangle::new(
            [
                (1.0, SegmentValue::Exact(y)),
                (ratio, SegmentValue::Exact(y + 1)),
            ],
            color.filled(),
        );
        rect.set_margin(5, 5, 0, 0);
        chart.draw_series(std::iter::once(rect))?;
        if let Some(g) = b.goal {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(g, SegmentValue::Exact(y)), (g, SegmentValue::Exact(y + 1))],
                BLACK.stroke_width(3),
            )))?;
        }
        let style =
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        let at = (ratio.max(1.0), SegmentValue::CenterOf(y));
        chart.draw_series(std::iter::once(
            EmptyElement::at(at) + Text::new(format!("{:.2}x", b.ratio), (6, 0), style),
        ))?;
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
        BLACK.stroke_width(1),
    )))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(ratio: f64, goal: Option<f64>) -> Bar {
        Bar {
            label: format!("r{ratio}"),
            ratio,
            goal,
            limit: false,
        }
    }

    #[test]
    fn x_range_covers_ratios_goals_and_parity() {
        assert_eq!(x_range(&[bar(2.0, None)]), (0.1, 10.0));
        assert_eq!(
            x_range(&[bar(0.03, Some(5.0)), bar(40.0, None)]),
            (0.01, 100.0)
        );
        assert_eq!(x_range(&[bar(f64::NAN, Some(0.5))]), (0.1, 10.0));
    }

    #[test]
    fn svg_has_every_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let bars = [bar(0.5, Some(0.9)), bar(3.0, Some(2.0)), bar(1.2, None)];
        write_svg(&path, "test chart", &bars).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        for b in &bars {
            assert!(svg.contains(&b.label), "{}", b.label);
            assert!(svg.contains(&format!("{:.2}x", b.ratio)));
        }
    }
}
