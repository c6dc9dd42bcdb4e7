//! The serve of a rule or of the default: one variant, or percentages per variant (to
//! 0.001%, weights out of 100,000) that must add up to 100%.

use anchor_engine::{Rollout, Serve, Variant, WeightedVariant};
use maud::{Markup, html};

use super::*;
use crate::dashboard::field_problems;

/// A weight out of 100,000 as the percentage a form field shows (`12.5`, `0.001`).
pub(super) fn percent_text(weight: u32) -> String {
    let whole = weight / 1000;
    let thousandths = weight % 1000;
    if thousandths == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{thousandths:03}")
            .trim_end_matches('0')
            .to_string()
    }
}

/// A percentage typed into a form as a weight out of 100,000: `None` for an empty field.
fn weight_of(text: &str) -> Result<Option<u32>, String> {
    let text = text.trim().trim_end_matches('%').trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || format!("`{text}` is not a percentage between 0 and 100 (to 0.001 at most)");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(bad());
    }
    if fraction.len() > 3 {
        return Err(format!(
            "`{text}`: percentages go to 0.001 at most (weights are out of 100,000)"
        ));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let fraction: u64 = format!("{fraction:0<3}").parse().map_err(|_| bad())?;
    let weight = whole.saturating_mul(1000).saturating_add(fraction);
    if weight > 100_000 {
        return Err(bad());
    }
    Ok(Some(weight as u32))
}

// ---- the serve: one variant or a split ----

/// The serve as its form fields, kept as typed.
pub(super) struct ServeForm {
    rollout: bool,
    variant: String,
    /// A percentage per variant of the flag, in the flag's order.
    percents: Vec<String>,
    bucket_by: String,
    salt: String,
}

impl ServeForm {
    pub(super) fn of(serve: &Serve, variants: &[Variant]) -> ServeForm {
        match serve {
            Serve::Variant(v) => ServeForm {
                rollout: false,
                variant: v.clone(),
                percents: vec![String::new(); variants.len()],
                bucket_by: String::new(),
                salt: String::new(),
            },
            Serve::Rollout(rollout) => ServeForm {
                rollout: true,
                variant: String::new(),
                percents: variants
                    .iter()
                    .map(|v| {
                        rollout
                            .variants
                            .iter()
                            .find(|w| w.variant == v.name)
                            .map(|w| percent_text(w.weight))
                            .unwrap_or_default()
                    })
                    .collect(),
                bucket_by: rollout.bucket_by.clone().unwrap_or_default(),
                salt: rollout.salt.clone().unwrap_or_default(),
            },
        }
    }

    pub(super) fn read(fields: &Fields, prefix: &str, variants: &[Variant]) -> ServeForm {
        ServeForm {
            rollout: fields.get(&format!("{prefix}.mode")) == "rollout",
            variant: fields.get(&format!("{prefix}.variant")).to_string(),
            percents: (0..variants.len())
                .map(|i| fields.get(&format!("{prefix}.pct.{i}")).to_string())
                .collect(),
            bucket_by: fields.get(&format!("{prefix}.bucket_by")).to_string(),
            salt: fields.get(&format!("{prefix}.salt")).to_string(),
        }
    }

    /// The serve, and the problems of the percentages (which the engine cannot see: it takes
    /// weights with any total).
    pub(super) fn serve(
        &self,
        prefix: &str,
        variants: &[Variant],
        problems: &mut Problems,
    ) -> Serve {
        if !self.rollout {
            return Serve::Variant(self.variant.trim().to_string());
        }
        let mut weighted = Vec::new();
        let mut total: u64 = 0;
        for (i, text) in self.percents.iter().enumerate() {
            match weight_of(text) {
                Ok(Some(weight)) => {
                    total += u64::from(weight);
                    weighted.push(WeightedVariant {
                        variant: variants[i].name.clone(),
                        weight,
                    });
                }
                Ok(None) => {}
                Err(problem) => add(problems, format!("{prefix}.pct.{i}"), problem),
            }
        }
        if !problems
            .keys()
            .any(|k| k.starts_with(&format!("{prefix}.pct.")))
            && total != 100_000
        {
            add(
                problems,
                format!("{prefix}.weights"),
                format!(
                    "the percentages add up to {}%, not 100%",
                    percent_text(total.min(u64::from(u32::MAX)) as u32)
                ),
            );
        }
        let optional = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Serve::Rollout(Rollout {
            variants: weighted,
            bucket_by: optional(&self.bucket_by),
            salt: optional(&self.salt),
        })
    }
}

/// The form field of a problem inside a serve (`rest` follows the serve's pointer).
pub(super) fn serve_field(
    prefix: &str,
    rest: &[&str],
    variants: &[Variant],
    serve: &Serve,
) -> String {
    match rest {
        ["variant", ..] => format!("{prefix}.variant"),
        ["rollout", "bucketBy", ..] => format!("{prefix}.bucket_by"),
        ["rollout", "salt", ..] => format!("{prefix}.salt"),
        ["rollout", "variants", j, ..] => {
            // The j-th weighted variant is one of the flag's, whose field is by its index.
            let name = match serve {
                Serve::Rollout(r) => j.parse::<usize>().ok().and_then(|j| r.variants.get(j)),
                Serve::Variant(_) => None,
            };
            match name.and_then(|w| variants.iter().position(|v| v.name == w.variant)) {
                Some(i) => format!("{prefix}.pct.{i}"),
                None => format!("{prefix}.weights"),
            }
        }
        _ => format!("{prefix}.weights"),
    }
}

pub(super) fn serve_fields(
    prefix: &str,
    legend: &str,
    variants: &[Variant],
    form: &ServeForm,
    problems: &Problems,
) -> Markup {
    let id = |what: &str| format!("{prefix}-{what}");
    let name = |what: &str| format!("{prefix}.{what}");
    html! {
        fieldset.serve {
            legend { (legend) }
            div.choice {
                input type="radio" id=(id("mode-variant")) name=(name("mode")) value="variant" checked[!form.rollout];
                label.check for=(id("mode-variant")) { "One variant for everyone" }
            }
            div.indent {
                label for=(id("variant")) { "Variant" }
                select id=(id("variant")) name=(name("variant"))
                    aria-invalid=[invalid(problems, &name("variant"))] {
                    @for v in variants {
                        option value=(v.name) selected[v.name == form.variant] { (v.name) }
                    }
                }
                (field_problems(problems_at(problems, &name("variant"))))
            }
            div.choice {
                input type="radio" id=(id("mode-rollout")) name=(name("mode")) value="rollout" checked[form.rollout];
                label.check for=(id("mode-rollout")) { "A percentage rollout" }
            }
            div.indent {
                p.small id=(id("weights-help")) { "Percentages of contexts per variant, adding up to 100 (to 0.001). An empty field leaves the variant out." }
                div.weights {
                    @for (i, v) in variants.iter().enumerate() {
                        @let field = format!("{prefix}.pct.{i}");
                        div {
                            label for=(format!("{prefix}-pct-{i}")) { (v.name) " %" }
                            input id=(format!("{prefix}-pct-{i}")) name=(field) inputmode="decimal" size="8"
                                value=(form.percents.get(i).map(String::as_str).unwrap_or(""))
                                aria-describedby={ (id("weights-help")) " " (id("weights")) }
                                aria-invalid=[invalid(problems, &field).or(invalid(problems, &name("weights")))];
                            (field_problems(problems_at(problems, &field)))
                        }
                    }
                }
                div id=(id("weights")) { (field_problems(problems_at(problems, &name("weights")))) }
                label for=(id("bucket-by")) { "Bucket by attribute" }
                input id=(id("bucket-by")) name=(name("bucket_by")) value=(form.bucket_by)
                    placeholder="targetingKey" aria-invalid=[invalid(problems, &name("bucket_by"))];
                (field_problems(problems_at(problems, &name("bucket_by"))))
                label for=(id("salt")) { "Salt" }
                input id=(id("salt")) name=(name("salt")) value=(form.salt) placeholder="the flag key";
                (field_problems(problems_at(problems, &name("salt"))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_become_weights_out_of_100000() {
        assert_eq!(weight_of("10"), Ok(Some(10_000)));
        assert_eq!(weight_of("12.5%"), Ok(Some(12_500)));
        assert_eq!(weight_of("0.001"), Ok(Some(1)));
        assert_eq!(weight_of(".5"), Ok(Some(500)));
        assert_eq!(weight_of(" "), Ok(None));
        assert!(weight_of("0.0001").is_err());
        assert!(weight_of("100.001").is_err());
        assert!(weight_of("-5").is_err());
        assert!(weight_of("ten").is_err());
        assert!(weight_of(".").is_err());
        for weight in [0, 1, 10, 12_500, 33_333, 100_000] {
            assert_eq!(weight_of(&percent_text(weight)), Ok(Some(weight)));
        }
    }
}
