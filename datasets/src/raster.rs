//! A tiny anti-aliased rasteriser for the synthetic set: implicit shapes filled with 2×2 supersampling.
//!
//! Shapes are point-membership tests in their own unit frame (radius about 1);
//! [`Placement`] maps them to pixels (translate, rotate, scale). Colours are f32 RGB in
//! 0–255 until [`Canvas::to_rgb8`] rounds and clamps them.

/// A shape in its local frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    /// Closed polygon, even–odd fill.
    Polygon(Vec<[f32; 2]>),
    /// Axis-aligned ellipse centred at the origin.
    Ellipse { rx: f32, ry: f32 },
    /// Elliptical annulus; `inner` is the hole's radius relative to the outer one.
    Ring { rx: f32, ry: f32, inner: f32 },
    /// Disc of radius 1 minus a disc of radius `cut` centred at `(offset, 0)`.
    Crescent { cut: f32, offset: f32 },
    /// Union of shapes, each shifted by an offset.
    Union(Vec<(Shape, [f32; 2])>),
}

impl Shape {
    /// True when the local point `(u, v)` is inside.
    pub(crate) fn contains(&self, u: f32, v: f32) -> bool {
        match self {
            Shape::Polygon(pts) => point_in_polygon(pts, u, v),
            Shape::Ellipse { rx, ry } => (u / rx).powi(2) + (v / ry).powi(2) <= 1.0,
            Shape::Ring { rx, ry, inner } => {
                let d = (u / rx).powi(2) + (v / ry).powi(2);
                d <= 1.0 && d >= inner * inner
            }
            Shape::Crescent { cut, offset } => {
                u * u + v * v <= 1.0 && (u - offset).powi(2) + v * v > cut * cut
            }
            Shape::Union(parts) => parts.iter().any(|(s, [du, dv])| s.contains(u - du, v - dv)),
        }
    }

    /// Radius of a disc around the origin that contains the shape.
    pub(crate) fn bound(&self) -> f32 {
        match self {
            Shape::Polygon(pts) => pts
                .iter()
                .map(|[x, y]| (x * x + y * y).sqrt())
                .fold(0.0, f32::max),
            Shape::Ellipse { rx, ry } | Shape::Ring { rx, ry, .. } => rx.max(*ry),
            Shape::Crescent { .. } => 1.0,
            Shape::Union(parts) => parts
                .iter()
                .map(|(s, [du, dv])| s.bound() + (du * du + dv * dv).sqrt())
                .fold(0.0, f32::max),
        }
    }
}

fn point_in_polygon(pts: &[[f32; 2]], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = pts.len().wrapping_sub(1);
    for i in 0..pts.len() {
        let [xi, yi] = pts[i];
        let [xj, yj] = pts[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Regular polygon with `n` vertices on the unit circle, first vertex at angle `phase`.
pub(crate) fn regular_polygon(n: usize, phase: f32) -> Vec<[f32; 2]> {
    (0..n)
        .map(|i| {
            let a = phase + i as f32 * std::f32::consts::TAU / n as f32;
            [a.cos(), a.sin()]
        })
        .collect()
}

/// Star with `n` points: outer radius 1, inner radius `inner`.
pub(crate) fn star(n: usize, inner: f32) -> Vec<[f32; 2]> {
    (0..2 * n)
        .map(|i| {
            let a = i as f32 * std::f32::consts::PI / n as f32 - std::f32::consts::FRAC_PI_2;
            let r = if i % 2 == 0 { 1.0 } else { inner };
            [r * a.cos(), r * a.sin()]
        })
        .collect()
}

/// Plus sign with arms of half-width `w` reaching radius 1.
pub(crate) fn cross(w: f32) -> Vec<[f32; 2]> {
    vec![
        [-w, -1.0],
        [w, -1.0],
        [w, -w],
        [1.0, -w],
        [1.0, w],
        [w, w],
        [w, 1.0],
        [-w, 1.0],
        [-w, w],
        [-1.0, w],
        [-1.0, -w],
        [-w, -w],
    ]
}

/// Arrow pointing along +u: shaft half-width `w`, head from `head` to 1.
pub(crate) fn arrow(w: f32, head: f32) -> Vec<[f32; 2]> {
    vec![
        [-1.0, -w],
        [head, -w],
        [head, -0.6],
        [1.0, 0.0],
        [head, 0.6],
        [head, w],
        [-1.0, w],
    ]
}

/// Where a shape goes on the canvas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Placement {
    /// Centre, in pixels.
    pub cx: f32,
    /// Centre, in pixels.
    pub cy: f32,
    /// Pixels per local unit.
    pub scale: f32,
    /// Rotation in radians.
    pub angle: f32,
}

impl Placement {
    /// Local coordinates of canvas point `(x, y)`.
    #[inline]
    fn to_local(self, cos: f32, sin: f32, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        (
            (dx * cos + dy * sin) / self.scale,
            (-dx * sin + dy * cos) / self.scale,
        )
    }
}

/// An RGB f32 image being drawn.
#[derive(Debug, Clone)]
pub(crate) struct Canvas {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3`, 0–255.
    pub data: Vec<f32>,
}

impl Canvas {
    /// A canvas filled with a linear gradient from `a` to `b` along direction `angle`.
    pub(crate) fn gradient(
        width: u32,
        height: u32,
        a: [f32; 3],
        b: [f32; 3],
        angle: f32,
    ) -> Canvas {
        let (w, h) = (width as f32, height as f32);
        let (c, s) = (angle.cos(), angle.sin());
        // project the corners to normalise t to 0..1
        let proj = |x: f32, y: f32| (x - w / 2.0) * c + (y - h / 2.0) * s;
        let half = proj(0.0, 0.0).abs().max(proj(w, 0.0).abs()).max(1e-6);
        let mut data = Vec::with_capacity(width as usize * height as usize * 3);
        for y in 0..height {
            for x in 0..width {
                let t = ((proj(x as f32 + 0.5, y as f32 + 0.5) / half + 1.0) / 2.0).clamp(0.0, 1.0);
                for ch in 0..3 {
                    data.push(a[ch] + (b[ch] - a[ch]) * t);
                }
            }
        }
        Canvas {
            width,
            height,
            data,
        }
    }

    /// Fills `shape` at `place`, each covered sub-sample coloured by `paint(u, v)` in
    /// local coordinates; 2×2 supersampling blends the edges.
    pub(crate) fn fill(
        &mut self,
        shape: &Shape,
        place: Placement,
        paint: &dyn Fn(f32, f32) -> [f32; 3],
    ) {
        let r = shape.bound() * place.scale + 1.0;
        let x0 = (place.cx - r).floor().max(0.0) as u32;
        let y0 = (place.cy - r).floor().max(0.0) as u32;
        let x1 = ((place.cx + r).ceil().max(0.0) as u32).min(self.width);
        let y1 = ((place.cy + r).ceil().max(0.0) as u32).min(self.height);
        let (cos, sin) = (place.angle.cos(), place.angle.sin());
        const SUB: [(f32, f32); 4] = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)];
        for y in y0..y1 {
            for x in x0..x1 {
                let mut acc = [0f32; 3];
                let mut hits = 0u32;
                for (sx, sy) in SUB {
                    let (u, v) = place.to_local(cos, sin, x as f32 + sx, y as f32 + sy);
                    if shape.contains(u, v) {
                        let c = paint(u, v);
                        acc[0] += c[0];
                        acc[1] += c[1];
                        acc[2] += c[2];
                        hits += 1;
                    }
                }
                if hits == 0 {
                    continue;
                }
                let cover = hits as f32 / 4.0;
                let i = (y as usize * self.width as usize + x as usize) * 3;
                for (dst, sum) in self.data[i..i + 3].iter_mut().zip(acc) {
                    *dst = *dst * (1.0 - cover) + sum / 4.0;
                }
            }
        }
    }

    /// Rounds and clamps to RGB8 (HWC).
    pub(crate) fn to_rgb8(&self) -> Vec<u8> {
        self.data
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect()
    }
}

/// HSV (h in turns, s and v in 0..1) to RGB 0–255.
pub(crate) fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = (h.rem_euclid(1.0)) * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as u32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r * 255.0, g * 255.0, b * 255.0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polygon_membership() {
        let square = vec![[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]];
        assert!(point_in_polygon(&square, 0.0, 0.0));
        assert!(point_in_polygon(&square, 0.9, -0.9));
        assert!(!point_in_polygon(&square, 1.1, 0.0));
        let s = star(5, 0.4);
        assert!(point_in_polygon(&s, 0.0, 0.0));
        // between two points, beyond the inner radius: outside
        let a = -std::f32::consts::FRAC_PI_2 + std::f32::consts::PI / 5.0;
        assert!(!point_in_polygon(&s, 0.8 * a.cos(), 0.8 * a.sin()));
        assert!(Shape::Ring {
            rx: 1.0,
            ry: 1.0,
            inner: 0.5
        }
        .contains(0.75, 0.0));
        assert!(!Shape::Ring {
            rx: 1.0,
            ry: 1.0,
            inner: 0.5
        }
        .contains(0.25, 0.0));
        assert!(!Shape::Crescent {
            cut: 0.8,
            offset: 0.5
        }
        .contains(0.5, 0.0));
        assert!(Shape::Crescent {
            cut: 0.8,
            offset: 0.5
        }
        .contains(-0.9, 0.0));
    }

    #[test]
    fn fill_covers_and_antialiases() {
        let mut c = Canvas::gradient(8, 8, [0.0; 3], [0.0; 3], 0.0);
        let square = Shape::Polygon(vec![[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]);
        // a 3×3 px square centred at (4, 4): covers pixels 2.5..5.5
        c.fill(
            &square,
            Placement {
                cx: 4.0,
                cy: 4.0,
                scale: 1.5,
                angle: 0.0,
            },
            &|_, _| [255.0, 0.0, 0.0],
        );
        let px = |x: usize, y: usize| c.data[(y * 8 + x) * 3];
        assert_eq!(px(4, 4), 255.0);
        assert_eq!(px(3, 3), 255.0);
        assert_eq!(px(0, 0), 0.0);
        // pixel 2 spans 2..3, the edge at 2.5: the right half of its samples are in
        assert_eq!(px(2, 4), 127.5);
        assert_eq!(c.data[(4 * 8 + 4) * 3 + 1], 0.0);
    }

    #[test]
    fn hsv_primaries() {
        assert_eq!(hsv(0.0, 1.0, 1.0), [255.0, 0.0, 0.0]);
        assert_eq!(hsv(1.0 / 3.0, 1.0, 1.0).map(f32::round), [0.0, 255.0, 0.0]);
        assert_eq!(hsv(0.5, 0.0, 0.5), [127.5, 127.5, 127.5]);
    }
}
