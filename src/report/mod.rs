//! `kvq report`: the ablation's figures on SmolLM2 (the multi-prompt study) and the error
//! metrics of SPEC.md section 5 on real K/V captures, as an HTML page with SVG charts and the
//! same figures as JSON.

pub mod plot;

use std::fmt::Write;

use kvq_runtime::KvFile;
use serde::{Deserialize, Serialize};

use crate::eval::{evaluate, EvalError};
use crate::model::SpanTreatment;
use crate::study::{Entry, EntryResult, StudyPrompt};
use plot::Point;

/// A study prompt as the report describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptInfo {
    /// The prompt's name.
    pub name: String,
    /// The span, in prompt tokens.
    pub span: [usize; 2],
    /// Positions compared.
    pub positions: usize,
}

impl From<&StudyPrompt> for PromptInfo {
    fn from(p: &StudyPrompt) -> PromptInfo {
        PromptInfo {
            name: p.name.clone(),
            span: [p.span.start, p.span.end],
            positions: p.positions,
        }
    }
}

/// One scheme pair's metrics on one capture (means over its layers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureRow {
    /// The capture's name.
    pub capture: String,
    /// The ablation entry (without its calibration, which these metrics do not see).
    pub name: String,
    /// The entry's family.
    pub family: String,
    /// Mean stored bits per element of keys and values.
    pub bits_per_element: f64,
    /// Mean relative error of the keys.
    pub k_rel: f64,
    /// Mean relative error of the values.
    pub v_rel: f64,
    /// Mean relative error of the attention output.
    pub attn_out_rel: f64,
}

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The study's prompts.
    pub prompts: Vec<PromptInfo>,
    /// Each ablation entry on SmolLM2, means over the prompts.
    pub model: Vec<EntryResult>,
    /// Each uncalibrated quantized entry on each capture.
    pub captures: Vec<CaptureRow>,
}

/// The metrics of every quantized, uncalibrated entry of `entries` on `file` (calibrated
/// entries have the same metrics as their uncalibrated twins and are skipped).
pub fn capture_rows(
    capture: &str,
    file: &KvFile,
    entries: &[Entry],
) -> Result<Vec<CaptureRow>, EvalError> {
    let mut rows = Vec::new();
    for e in entries {
        let SpanTreatment::Quantized(s) = e.treatment else {
            continue;
        };
        if s.calibrate.is_some() {
            continue;
        }
        let r = evaluate(file, &s.key, &s.value, file.causal)?;
        rows.push(CaptureRow {
            capture: capture.to_string(),
            name: e.name.clone(),
            family: e.family.clone(),
            bits_per_element: (r.bits_per_element.key + r.bits_per_element.value) / 2.0,
            k_rel: r.mean.k_rel,
            v_rel: r.mean.v_rel,
            attn_out_rel: r.mean.attn_out_rel,
        });
    }
    Ok(rows)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn family_of<'a>(entries: &'a [Entry], name: &str) -> &'a str {
    entries
        .iter()
        .find(|e| e.name == name)
        .map_or("", |e| e.family.as_str())
}

/// The report as one self-contained HTML page.
pub fn html(report: &Report, entries: &[Entry]) -> String {
    let mut h = String::new();
    h.push_str(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kvq report</title><style>\
         body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}\
         table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}\
         td.n{text-align:right}</style></head><body>",
    );
    h.push_str("<h1>kvq report: 1-bit visual-span schemes</h1>");
    section_model(&mut h, report, entries);
    section_captures(&mut h, report);
    h.push_str("</body></html>\n");
    h
}

fn section_model(h: &mut String, report: &Report, entries: &[Entry]) {
    let n = report.prompts.len();
    let _ = write!(
        h,
        "<h2>SmolLM2-135M: a span of each of {n} prompts in kvq's cache</h2><p>Each prompt is \
         prefilled in full precision; the span is quantized once (or dropped from attention) and \
         the following positions are teacher-forced through the quantized and the \
         full-precision cache together. Top-1: how often the most likely next token agrees with \
         full precision; KL: KL(full || quantized) in nats; perplexity ratio: the continuation's \
         perplexity over full precision's. Figures are means over the prompts; calibrated \
         entries use d = {}.</p><p>Prompts: ",
        crate::study::CALIBRATE_D
    );
    let names: Vec<String> = report
        .prompts
        .iter()
        .map(|p| {
            format!(
                "{} (span {}..{}, {} positions)",
                p.name, p.span[0], p.span[1], p.positions
            )
        })
        .collect();
    h.push_str(&esc(&names.join(", ")));
    h.push_str("</p>");
    let points = |f: &dyn Fn(&EntryResult) -> f64| -> Vec<Point> {
        report
            .model
            .iter()
            .map(|r| Point {
                label: r.name.clone(),
                family: family_of(entries, &r.name).to_string(),
                x: r.bits_per_element,
                y: f(r),
            })
            .collect()
    };
    let dropped = report
        .model
        .iter()
        .find(|r| r.treatment == "dropped")
        .map(|r| r.mean_top1);
    h.push_str(&plot::bars(
        "Mean top-1 agreement with full precision",
        "",
        &points(&|r| r.mean_top1),
        1.0,
        dropped.map(|d| ("span dropped", d)),
    ));
    h.push_str(&plot::scatter(
        "Mean KL(full || quantized) against bits per element",
        "stored bits per span element",
        "mean KL, nats",
        &points(&|r| r.mean_kl),
        true,
    ));
    h.push_str("<table><tr><th>#</th><th>entry</th><th>bits/elt</th><th>mean top-1</th><th>mean KL</th><th>ppl ratio</th>");
    for p in &report.prompts {
        let _ = write!(h, "<th>{}</th>", esc(&p.name));
    }
    h.push_str("<th>treatment</th></tr>");
    for (i, r) in report.model.iter().enumerate() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=n>{:.3}</td><td class=n><b>{:.1}%</b></td><td class=n>{:.4}</td><td class=n>{:.3}</td>",
            i + 1,
            esc(&r.name),
            r.bits_per_element,
            100.0 * r.mean_top1,
            r.mean_kl,
            r.mean_perplexity_ratio
        );
        for e in &r.prompts {
            let _ = write!(h, "<td class=n>{:.1}%</td>", 100.0 * e.top1_agreement);
        }
        let _ = write!(h, "<td><small>{}</small></td></tr>", esc(&r.treatment));
    }
    h.push_str("</table>");
}

fn section_captures(h: &mut String, report: &Report) {
    let mut captures: Vec<&str> = Vec::new();
    for r in &report.captures {
        if !captures.contains(&r.capture.as_str()) {
            captures.push(&r.capture);
        }
    }
    for cap in captures {
        let rows: Vec<&CaptureRow> = report
            .captures
            .iter()
            .filter(|r| r.capture == cap)
            .collect();
        let _ = write!(
            h,
            "<h2>Error metrics on {}</h2><p>SPEC.md section 5: relative errors of the dequantized \
             keys and values and of the attention output (every layer of the capture quantized as \
             one span; means over layers). Calibration does not enter these metrics.</p>",
            esc(cap)
        );
        let points = |f: &dyn Fn(&CaptureRow) -> f64| -> Vec<Point> {
            rows.iter()
                .map(|r| Point {
                    label: r.name.clone(),
                    family: r.family.clone(),
                    x: r.bits_per_element,
                    y: f(r),
                })
                .collect()
        };
        h.push_str(&plot::scatter(
            &format!("{cap}: attention-output error against bits per element"),
            "stored bits per element (mean of K and V)",
            "attn_out_rel",
            &points(&|r| r.attn_out_rel),
            true,
        ));
        h.push_str(&plot::scatter(
            &format!("{cap}: key error against bits per element"),
            "stored bits per element (mean of K and V)",
            "k_rel",
            &points(&|r| r.k_rel),
            true,
        ));
        h.push_str("<table><tr><th>#</th><th>entry</th><th>bits/elt</th><th>k_rel</th><th>v_rel</th><th>attn_out_rel</th></tr>");
        for (i, r) in rows.iter().enumerate() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=n>{:.3}</td><td class=n>{:.4}</td><td class=n>{:.4}</td><td class=n>{:.4}</td></tr>",
                i + 1,
                esc(&r.name),
                r.bits_per_element,
                r.k_rel,
                r.v_rel,
                r.attn_out_rel
            );
        }
        h.push_str("</table>");
    }
}
