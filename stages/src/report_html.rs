//! `report.html`: one self-contained page over a report's runs — the run table, the plots
//! (embedded PNGs), and for each run what it retrieved: per-class Recall@1 (its
//! distribution and the worst classes), retrieval grids of seeded random queries and of
//! the worst queries beside the untrained network's for the same queries, and the
//! most-confused class pairs. Images are small JPEG thumbnails embedded as `data:` URIs;
//! there is no script, no stylesheet or font to fetch, nothing but the one file.
use crate::config::ReportSettings;
use crate::retrievals::{
    self, Catalogue, ClassScore, ConfusedPair, Gallery, Neighbours, QueryScore,
};
use crate::thumbs::{png_uri, Thumbnails};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// A table: header and rows of plain-text cells (escaped when written).
#[derive(Debug, Clone, Default)]
pub struct Cells {
    /// Column names.
    pub header: Vec<String>,
    /// Rows.
    pub rows: Vec<Vec<String>>,
}

/// What one run retrieved, analysed from its neighbours and index.
pub struct RunRetrievals {
    /// The run's index.
    pub cat: Arc<Catalogue>,
    /// The trained network's neighbours.
    pub trained: Neighbours,
    /// The untrained network's, for the same queries.
    pub untrained: Option<Neighbours>,
    /// Every query's score.
    pub scores: Vec<QueryScore>,
    /// The random queries.
    pub random: Vec<QueryScore>,
    /// The worst queries.
    pub worst: Vec<QueryScore>,
    /// Per-class scores, worst first.
    pub classes: Vec<ClassScore>,
    /// The untrained network's per-class Recall@1.
    pub untrained_classes: Option<Vec<ClassScore>>,
    /// The most-confused pairs.
    pub pairs: Vec<ConfusedPair>,
    /// Neighbours shown per query.
    pub k: usize,
    /// Thumbnails per class shown.
    pub class_images: usize,
}

impl RunRetrievals {
    /// Scores every query and picks what the page shows, as `view` says.
    pub fn analyse(
        cat: Arc<Catalogue>,
        trained: Neighbours,
        untrained: Option<Neighbours>,
        gallery: Gallery,
        view: &ReportSettings,
    ) -> Self {
        let scores = retrievals::score_queries(&trained, &cat, gallery);
        let random = retrievals::random_queries(&scores, view.queries, view.seed);
        let worst = retrievals::worst_queries(&scores, &trained, view.worst_queries);
        let classes = retrievals::class_scores(&scores, &trained, &cat);
        let untrained_classes = untrained.as_ref().map(|u| {
            let s = retrievals::score_queries(u, &cat, gallery);
            retrievals::class_scores(&s, u, &cat)
        });
        let k = view.k.min(trained.depth);
        let pairs = retrievals::confused_pairs(&scores, &trained, &cat, k, view.confused_pairs);
        RunRetrievals {
            cat,
            trained,
            untrained,
            scores,
            random,
            worst,
            classes,
            untrained_classes,
            pairs,
            k,
            class_images: view.class_images,
        }
    }

    /// Every image the page shows of this run.
    pub fn images(&self, shown_classes: usize) -> BTreeSet<u32> {
        let mut ids = BTreeSet::new();
        for q in self.random.iter().chain(&self.worst) {
            ids.insert(q.query);
            ids.extend(&self.trained.row(q.row).0[..self.k]);
            if let Some(u) = &self.untrained {
                if let Some(r) = u.row_of(q.query) {
                    ids.extend(&u.row(r).0[..self.k.min(u.depth)]);
                }
            }
        }
        for c in self.classes.iter().take(shown_classes) {
            ids.extend(self.examples(c.class, self.class_images));
            if let Some((other, _)) = c.confused_with {
                ids.extend(self.examples(other, 2));
            }
        }
        for p in &self.pairs {
            ids.extend(self.examples(p.query_class, 3));
            ids.extend(self.examples(p.retrieved_class, 3));
        }
        ids
    }

    fn examples(&self, class: u32, n: usize) -> Vec<u32> {
        retrievals::class_examples(&self.trained, &self.cat, class, n)
    }
}

/// One run's part of the page.
pub struct RunSection {
    /// The run's name.
    pub name: String,
    /// Headline numbers: (label, value).
    pub summary: Vec<(String, String)>,
    /// Its loss (and validation) plot.
    pub loss_png: Option<Vec<u8>>,
    /// What it retrieved, or why the page cannot show it.
    pub retrievals: Result<RunRetrievals, String>,
    /// Its thumbnails.
    pub thumbs: Arc<Thumbnails>,
}

/// The whole page.
pub struct Page {
    /// The title (the runs' names).
    pub title: String,
    /// The run table.
    pub table: Cells,
    /// Mean ± std over seeds, when some group has several runs.
    pub groups: Option<Cells>,
    /// `recall.png`.
    pub recall_png: Vec<u8>,
    /// `r1.png`.
    pub r1_png: Vec<u8>,
    /// One section per run.
    pub runs: Vec<RunSection>,
    /// Worst classes shown.
    pub classes: usize,
    /// Thumbnail size.
    pub thumbnail_px: u32,
}

/// The page's style sheet (shared with `dml search --html`, which draws the same cells).
pub const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d1d1f;margin:0 auto;max-width:1500px;padding:12px 28px 60px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:20px;margin:34px 0 8px;padding-top:10px;border-top:2px solid #ccc}h3{font-size:16px;margin:22px 0 6px}
nav a{margin-right:14px}a{color:#1f5fa8}
.muted{color:#666}.note{background:#fff6dd;border:1px solid #e6cf7a;padding:6px 10px;margin:8px 0;border-radius:4px}
table{border-collapse:collapse;margin:6px 0 10px}th,td{padding:3px 9px;border-bottom:1px solid #ddd;text-align:right;vertical-align:middle}
th{background:#f3f4f6;font-weight:600;position:sticky;top:0}td.l,th.l{text-align:left}
.scroll{overflow-x:auto}
.plots img{max-width:100%;height:auto;margin:4px 12px 4px 0;vertical-align:top;border:1px solid #e3e3e3}
.summary span{display:inline-block;margin-right:18px}.summary b{font-variant-numeric:tabular-nums}
.q{display:flex;flex-wrap:wrap;gap:4px 26px;margin:10px 0;padding-bottom:8px;border-bottom:1px dashed #ddd}
.strip{display:flex;gap:3px;align-items:flex-start}
.strip .tag{writing-mode:vertical-rl;transform:rotate(180deg);font-size:11px;color:#666;align-self:center}
.cell{text-align:center;font-size:11px;line-height:1.25}
.cell .im{box-sizing:content-box;display:flex;align-items:center;justify-content:center;border:3px solid #bbb;background:#f4f4f4;margin:0 auto}
.cell .im img{display:block;max-width:100%;max-height:100%}
.cell.ok .im{border-color:#2ca02c}.cell.bad .im{border-color:#d62728}.cell.query .im{border-color:#1f77b4;border-width:3px}
.cell .c{overflow:hidden;white-space:nowrap;text-overflow:ellipsis;color:#444}
.cell.query{margin-right:6px}.cell.query .c{font-weight:600;color:#1f77b4}
.untrained .cell .im{opacity:.9}
.thumbs{display:flex;gap:3px;flex-wrap:nowrap}.thumbs img{display:block}
.legend span{display:inline-block;margin-right:16px}.sw{display:inline-block;width:12px;height:12px;vertical-align:-1px;margin-right:4px;border:3px solid}
"#;

/// Writes the page.
pub fn render(page: &Page) -> String {
    let mut h = String::with_capacity(1 << 20);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        esc(&page.title)
    );
    let _ = write!(
        h,
        "<h1>{}</h1><p class=\"muted\">written by dml's report stage from the run's artifacts \
         (metrics, neighbours table, index, decode cache); one self-contained file.</p>",
        esc(&page.title)
    );
    h.push_str("<nav><a href=\"#runs\">runs</a><a href=\"#plots\">plots</a>");
    for (i, r) in page.runs.iter().enumerate() {
        let _ = write!(h, "<a href=\"#run-{i}\">{}</a>", esc(&r.name));
    }
    h.push_str("</nav>\n<h2 id=\"runs\">Runs</h2>");
    table(&mut h, &page.table, 1);
    if let Some(g) = &page.groups {
        h.push_str("<h3>Mean ± std over seeds</h3>");
        table(&mut h, g, 1);
    }
    h.push_str("<h2 id=\"plots\">Recall@K and Recall@1</h2><div class=\"plots\">");
    let _ = write!(
        h,
        "<img alt=\"Recall@K curves\" src=\"{}\"><img alt=\"Recall@1 per run\" src=\"{}\">",
        png_uri(&page.recall_png),
        png_uri(&page.r1_png)
    );
    h.push_str("</div>\n");
    for (i, run) in page.runs.iter().enumerate() {
        section(&mut h, i, run, page);
    }
    h.push_str("</body></html>\n");
    h
}

fn table(h: &mut String, t: &Cells, left_columns: usize) {
    h.push_str("<div class=\"scroll\"><table><thead><tr>");
    for (j, c) in t.header.iter().enumerate() {
        let class = if j < left_columns { " class=\"l\"" } else { "" };
        let _ = write!(h, "<th{class}>{}</th>", esc(c));
    }
    h.push_str("</tr></thead><tbody>");
    for row in &t.rows {
        h.push_str("<tr>");
        for (j, c) in row.iter().enumerate() {
            let class = if j < left_columns { " class=\"l\"" } else { "" };
            let _ = write!(h, "<td{class}>{}</td>", esc(c));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div>\n");
}

fn section(h: &mut String, i: usize, run: &RunSection, page: &Page) {
    let _ = write!(
        h,
        "<h2 id=\"run-{i}\">{}</h2><p class=\"summary\">",
        esc(&run.name)
    );
    for (k, v) in &run.summary {
        let _ = write!(h, "<span>{} <b>{}</b></span>", esc(k), esc(v));
    }
    h.push_str("</p>");
    if let Some(png) = &run.loss_png {
        let _ = write!(
            h,
            "<div class=\"plots\"><img alt=\"loss of {}\" src=\"{}\"></div>",
            esc(&run.name),
            png_uri(png)
        );
    }
    let r = match &run.retrievals {
        Ok(r) => r,
        Err(why) => {
            let _ = write!(
                h,
                "<p class=\"note\">No retrievals shown: {}.</p>",
                esc(why)
            );
            return;
        }
    };
    let t = &run.thumbs;
    if let Some(why) = &t.missing {
        let _ = write!(
            h,
            "<p class=\"note\">Images are missing ({}): the page shows class names and distances only.</p>",
            esc(why)
        );
    } else if t.failed > 0 {
        let _ = write!(
            h,
            "<p class=\"note\">{} image(s) could not be shown (skipped when decoding, or unreadable).</p>",
            t.failed
        );
    }
    let ctx = Ctx {
        r,
        thumbs: t,
        px: page.thumbnail_px,
    };
    per_class(h, &ctx, page.classes);
    grids(h, &ctx);
    pairs(h, &ctx);
}

struct Ctx<'a> {
    r: &'a RunRetrievals,
    thumbs: &'a Thumbnails,
    px: u32,
}

impl Ctx<'_> {
    /// An image in a frame: `class` is `ok`, `bad` or `query`; `caption` lines under it.
    fn cell(&self, h: &mut String, id: u32, class: &str, captions: &[String]) {
        let name = self.r.cat.class_name(id);
        let _ = write!(
            h,
            "<div class=\"cell {class}\" style=\"width:{}px\" title=\"image {id}: {}\"><div class=\"im\" style=\"width:{px}px;height:{px}px\">",
            self.px + 6,
            esc(name),
            px = self.px
        );
        match self.thumbs.uri(id) {
            Some(uri) => {
                let _ = write!(h, "<img alt=\"image {id}\" src=\"{uri}\">");
            }
            None => h.push_str("<span class=\"muted\">no image</span>"),
        }
        h.push_str("</div>");
        for c in captions {
            let _ = write!(h, "<div class=\"c\">{}</div>", esc(c));
        }
        h.push_str("</div>");
    }

    fn thumbs_of(&self, h: &mut String, ids: &[u32]) {
        h.push_str("<div class=\"thumbs\">");
        for &id in ids {
            match self.thumbs.uri(id) {
                Some(uri) => {
                    let _ = write!(
                        h,
                        "<img alt=\"image {id}\" title=\"image {id}\" src=\"{uri}\" style=\"max-width:{px}px;max-height:{px}px\">",
                        px = self.px
                    );
                }
                None => {
                    let _ = write!(h, "<span class=\"muted\">image {id}</span>");
                }
            }
        }
        h.push_str("</div>");
    }

    fn class_label(&self, class: u32) -> String {
        self.r.cat.name_of_class(class)
    }
}

fn pct(x: f64) -> String {
    format!("{:.1} %", 100.0 * x)
}

/// Per-class Recall@1: a histogram (trained and untrained), and the worst classes.
fn per_class(h: &mut String, ctx: &Ctx<'_>, shown: usize) {
    let r = ctx.r;
    let _ = write!(
        h,
        "<h3>Recall@1 per class ({} classes with a query that has a positive)</h3>",
        r.classes.len()
    );
    let trained = retrievals::recall_histogram(&r.classes);
    let untrained = r
        .untrained_classes
        .as_ref()
        .map(|u| retrievals::recall_histogram(u));
    histogram_svg(h, &trained, untrained.as_ref());
    if r.classes.is_empty() || shown == 0 {
        return;
    }
    let before: HashMap<u32, f64> = r
        .untrained_classes
        .iter()
        .flatten()
        .map(|c| (c.class, c.recall_at_1))
        .collect();
    let n = shown.min(r.classes.len());
    let _ = write!(h, "<h3>The {n} classes with the lowest Recall@1</h3>");
    h.push_str("<div class=\"scroll\"><table><thead><tr><th class=\"l\">class</th><th>queries</th><th>R@1</th>");
    if !before.is_empty() {
        h.push_str("<th>untrained R@1</th>");
    }
    let _ = write!(
        h,
        "<th>MAP@R (top {})</th><th class=\"l\">images</th><th class=\"l\">retrieved first instead, most often</th></tr></thead><tbody>",
        r.trained.depth
    );
    for c in r.classes.iter().take(n) {
        let _ = write!(
            h,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td>",
            esc(&ctx.class_label(c.class)),
            c.queries,
            pct(c.recall_at_1)
        );
        if !before.is_empty() {
            let _ = write!(
                h,
                "<td>{}</td>",
                before.get(&c.class).map_or("—".into(), |&v| pct(v))
            );
        }
        let _ = write!(h, "<td>{}</td><td class=\"l\">", pct(c.map));
        ctx.thumbs_of(h, &r.examples(c.class, r.class_images));
        h.push_str("</td><td class=\"l\">");
        if let Some((other, n)) = c.confused_with {
            let _ = write!(
                h,
                "<div>{} ({n} of {} queries)</div>",
                esc(&ctx.class_label(other)),
                c.queries
            );
            ctx.thumbs_of(h, &r.examples(other, 2));
        }
        h.push_str("</td></tr>");
    }
    h.push_str("</tbody></table></div>\n");
}

/// Ten bins of per-class Recall@1 as an inline SVG bar chart.
fn histogram_svg(h: &mut String, trained: &[u32; 10], untrained: Option<&[u32; 10]>) {
    let (w, ht, left, bottom, top) = (620.0, 230.0, 56.0, 40.0, 14.0);
    let max = trained
        .iter()
        .chain(untrained.into_iter().flatten())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let plot_w = w - left - 10.0;
    let plot_h = ht - bottom - top;
    let bin = plot_w / 10.0;
    let _ = write!(
        h,
        "<svg width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" role=\"img\" aria-label=\"histogram of per-class Recall@1\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    // Axes and a few gridlines.
    for t in 0..=4 {
        let v = max * t as f64 / 4.0;
        let y = top + plot_h - plot_h * t as f64 / 4.0;
        let _ = write!(
            h,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e5e5e5\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>",
            left + plot_w,
            left - 6.0,
            y + 4.0,
            v
        );
    }
    let series: Vec<(&[u32; 10], &str, &str)> = match untrained {
        Some(u) => vec![(u, "#bbbbbb", "untrained"), (trained, "#1f77b4", "trained")],
        None => vec![(trained, "#1f77b4", "trained")],
    };
    let bar = (bin - 6.0) / series.len() as f64;
    for (s, (values, color, name)) in series.iter().enumerate() {
        for (b, &v) in values.iter().enumerate() {
            let bh = plot_h * v as f64 / max;
            let x = left + b as f64 * bin + 3.0 + s as f64 * bar;
            let _ = write!(
                h,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{name}: {v} classes with R@1 in {}–{} %</title></rect>",
                top + plot_h - bh,
                b * 10,
                b * 10 + 10
            );
        }
    }
    for b in 0..=10 {
        let x = left + b as f64 * bin;
        let _ = write!(
            h,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + plot_h + 15.0,
            b * 10
        );
    }
    let _ = write!(
        h,
        "<line x1=\"{left}\" x2=\"{left}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"#333\"/><line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>",
        top + plot_h,
        left + plot_w,
        top + plot_h,
        top + plot_h
    );
    let _ = write!(
        h,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">Recall@1 of the class (%)</text><text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">classes</text>",
        left + plot_w / 2.0,
        ht - 6.0,
        top + plot_h / 2.0
    );
    for (s, (_, color, name)) in series.iter().enumerate() {
        let x = left + 12.0 + 90.0 * s as f64;
        let _ = write!(
            h,
            "<rect x=\"{x}\" y=\"{top}\" width=\"11\" height=\"11\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{name}</text>",
            x + 15.0,
            top + 10.0
        );
    }
    h.push_str("</svg>\n");
}

/// The retrieval grids: random queries, then the worst.
fn grids(h: &mut String, ctx: &Ctx<'_>) {
    let r = ctx.r;
    let untrained = if r.untrained.is_some() {
        ", and beside them the untrained network's for the same query"
    } else {
        ""
    };
    let _ = write!(
        h,
        "<p class=\"legend muted\"><span><i class=\"sw\" style=\"border-color:#1f77b4\"></i>query</span><span><i class=\"sw\" style=\"border-color:#2ca02c\"></i>same class</span><span><i class=\"sw\" style=\"border-color:#d62728\"></i>another class</span> Each query's {} nearest neighbours (rank · distance, class){untrained}.</p>",
        r.k
    );
    if r.k < 1 {
        return;
    }
    if !r.random.is_empty() {
        let _ = write!(h, "<h3>Random queries ({}, seeded)</h3>", r.random.len());
        for q in &r.random {
            query_row(h, ctx, q);
        }
    }
    if !r.worst.is_empty() {
        let _ = write!(
            h,
            "<h3>The {} worst queries</h3><p class=\"muted\">By the rank of the first correct neighbour among the {} saved per query (none: worst), then the lowest average precision, then the closest first neighbour.</p>",
            r.worst.len(),
            r.trained.depth
        );
        for q in &r.worst {
            query_row(h, ctx, q);
        }
    }
}

fn query_row(h: &mut String, ctx: &Ctx<'_>, q: &QueryScore) {
    let r = ctx.r;
    let class = r.cat.class(q.query);
    let first = match q.first_correct {
        Some(f) => format!("first correct: {f}"),
        None => format!("none in top {}", r.trained.depth),
    };
    h.push_str("<div class=\"q\"><div class=\"strip\">");
    ctx.cell(
        h,
        q.query,
        "query",
        &[
            r.cat.class_name(q.query).to_string(),
            first,
            format!("AP {:.2}", q.ap),
        ],
    );
    strip(h, ctx, class, r.trained.row(q.row), r.k);
    h.push_str("</div>");
    if let Some(u) = &r.untrained {
        if let Some(row) = u.row_of(q.query) {
            h.push_str("<div class=\"strip untrained\"><span class=\"tag\">untrained</span>");
            strip(h, ctx, class, u.row(row), r.k.min(u.depth));
            h.push_str("</div>");
        }
    }
    h.push_str("</div>\n");
}

fn strip(h: &mut String, ctx: &Ctx<'_>, class: u32, (ids, dist): (&[u32], &[f32]), k: usize) {
    for (i, (&g, &d)) in ids.iter().zip(dist).take(k).enumerate() {
        let ok = ctx.r.cat.class(g) == class;
        ctx.cell(
            h,
            g,
            if ok { "ok" } else { "bad" },
            &[
                format!("{} · {}", i + 1, distance(d)),
                ctx.r.cat.class_name(g).to_string(),
            ],
        );
    }
}

fn distance(d: f32) -> String {
    if d.abs() >= 100.0 {
        format!("{d:.0}")
    } else if d.abs() >= 1.0 {
        format!("{d:.2}")
    } else {
        format!("{d:.3}")
    }
}

/// The most-confused class pairs.
fn pairs(h: &mut String, ctx: &Ctx<'_>) {
    let r = ctx.r;
    if r.pairs.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<h3>The most-confused class pairs</h3><p class=\"muted\">Wrong neighbours among every query's top {}: how many were of the other class, and their share of the query class's top-{} slots.</p>",
        r.k, r.k
    );
    h.push_str("<div class=\"scroll\"><table><thead><tr><th class=\"l\">queries of</th><th class=\"l\"></th><th class=\"l\">retrieve</th><th class=\"l\"></th><th>neighbours</th><th>share</th></tr></thead><tbody>");
    for p in &r.pairs {
        let _ = write!(
            h,
            "<tr><td class=\"l\">{}</td><td class=\"l\">",
            esc(&ctx.class_label(p.query_class))
        );
        ctx.thumbs_of(h, &r.examples(p.query_class, 3));
        let _ = write!(
            h,
            "</td><td class=\"l\">{}</td><td class=\"l\">",
            esc(&ctx.class_label(p.retrieved_class))
        );
        ctx.thumbs_of(h, &r.examples(p.retrieved_class, 3));
        let _ = write!(h, "</td><td>{}</td><td>{}</td></tr>", p.count, pct(p.share));
    }
    h.push_str("</tbody></table></div>\n");
}
