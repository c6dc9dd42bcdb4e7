//! The environment's page: the rules in their order, and the form of the individual targets,
//! the default serve, the off variant and the prerequisites.

use anchor_engine::{Diagnostic, FlagConfig, Prerequisite, Variant};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;

use super::rules::rule_words;
use super::serve::{ServeForm, serve_field, serve_fields};
use super::*;
use crate::AppState;
use crate::api;
use crate::dashboard::{Signed, error_page, field_problems, form_caller, html_response};
use crate::error::ApiError;

// ---- the environment's page ----

pub(super) fn routes() -> Router<AppState> {
    Router::new().route(BASE, get(targeting_page).post(save_targeting))
}

/// The environment-wide settings as typed.
pub(super) struct SettingsForm {
    /// Keys per variant, in the flag's variant order.
    targets: Vec<String>,
    off_variant: String,
    default_serve: ServeForm,
    prerequisites: Vec<(String, String)>,
    comment: String,
}

impl SettingsForm {
    pub(super) fn of(config: &FlagConfig, variants: &[Variant]) -> SettingsForm {
        let mut prerequisites: Vec<(String, String)> = config
            .prerequisites
            .iter()
            .map(|p| (p.flag.clone(), p.variant.clone()))
            .collect();
        // One empty row to add a prerequisite without asking for it first.
        prerequisites.push(Default::default());
        SettingsForm {
            targets: variants
                .iter()
                .map(|v| {
                    config
                        .targets
                        .get(&v.name)
                        .map(|keys| keys.join("\n"))
                        .unwrap_or_default()
                })
                .collect(),
            off_variant: config.off_variant.clone(),
            default_serve: ServeForm::of(&config.default_serve, variants),
            prerequisites,
            comment: String::new(),
        }
    }

    pub(super) fn read(fields: &Fields, variants: &[Variant]) -> SettingsForm {
        SettingsForm {
            targets: (0..variants.len())
                .map(|i| fields.get(&format!("targets.{i}")).to_string())
                .collect(),
            off_variant: fields.get("off_variant").to_string(),
            default_serve: ServeForm::read(fields, "default", variants),
            prerequisites: (0..fields.count("prereqs"))
                .map(|k| {
                    (
                        fields.get(&format!("prereq.{k}.flag")).to_string(),
                        fields.get(&format!("prereq.{k}.variant")).to_string(),
                    )
                })
                .collect(),
            comment: fields.get("comment").to_string(),
        }
    }

    /// The configuration with these settings, its rules and switch unchanged; the form's own
    /// problems; and the form row of each prerequisite written (empty rows are left out).
    pub(super) fn apply(
        &self,
        mut config: FlagConfig,
        variants: &[Variant],
    ) -> (FlagConfig, Problems, Vec<usize>) {
        let mut problems = Problems::new();
        config.targets.clear();
        for (i, text) in self.targets.iter().enumerate() {
            let keys: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect();
            if !keys.is_empty() {
                config.targets.insert(variants[i].name.clone(), keys);
            }
        }
        config.off_variant = self.off_variant.trim().to_string();
        config.default_serve = self.default_serve.serve("default", variants, &mut problems);
        let mut rows = Vec::new();
        config.prerequisites.clear();
        for (k, (flag, variant)) in self.prerequisites.iter().enumerate() {
            if flag.trim().is_empty() && variant.trim().is_empty() {
                continue;
            }
            rows.push(k);
            config.prerequisites.push(Prerequisite {
                flag: flag.trim().to_string(),
                variant: variant.trim().to_string(),
            });
        }
        (config, problems, rows)
    }
}

/// The settings form's field of an API problem.
fn settings_field(path: &str, config: &FlagConfig, variants: &[Variant], rows: &[usize]) -> String {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["targets", variant, ..] => {
            let name = unescape_pointer(variant);
            match variants.iter().position(|v| v.name == name) {
                Some(i) => format!("targets.{i}"),
                None => "targets".into(),
            }
        }
        ["offVariant", ..] => "off_variant".into(),
        ["defaultServe", rest @ ..] => {
            serve_field("default", rest, variants, &config.default_serve)
        }
        ["prerequisites", j, what, ..] => match j.parse::<usize>().ok().and_then(|j| rows.get(j)) {
            Some(row) if *what == "variant" => format!("prereq.{row}.variant"),
            Some(row) => format!("prereq.{row}.flag"),
            None => "prerequisites".into(),
        },
        ["prerequisites", ..] => "prerequisites".into(),
        ["comment", ..] => "comment".into(),
        _ => "form".into(),
    }
}

#[derive(Deserialize, Default)]
struct NoticeQuery {
    notice: Option<String>,
}

async fn targeting_page(
    State(state): State<AppState>,
    signed: Signed,
    Path((project, flag, environment)): Path<(String, String, String)>,
    Query(query): Query<NoticeQuery>,
) -> Response {
    let path = (project.as_str(), flag.as_str(), environment.as_str());
    let loaded = match load(&state, &signed.caller, path).await {
        Ok(loaded) => loaded,
        Err(e) => return error_page(e),
    };
    let others = match other_flags(&state, &project, &flag).await {
        Ok(others) => others,
        Err(e) => return error_page(e),
    };
    let form = SettingsForm::of(&loaded.config, &loaded.variants);
    let notice = query
        .notice
        .as_deref()
        .and_then(|n| notice_markup(&project, n));
    html_response(
        StatusCode::OK,
        targeting_markup(
            &signed,
            path,
            &loaded,
            loaded.config.version,
            &form,
            &others,
            &Problems::new(),
            notice.as_ref(),
        ),
    )
}

/// Another flag of the project, offered as a prerequisite: its key and its variants' names.
pub(super) type OtherFlag = (String, Vec<String>);

/// The project's other flags, offered as prerequisites.
pub(super) async fn other_flags(
    state: &AppState,
    project: &str,
    flag: &str,
) -> Result<Vec<OtherFlag>, ApiError> {
    let filter = anchor_store::FlagFilter {
        tag: None,
        lifecycle: None,
        enabled_in: None,
        text: None,
        include_archived: false,
        after: None,
        limit: 1000,
    };
    Ok(state
        .store
        .flags(project, &filter)
        .await?
        .items
        .into_iter()
        .filter(|r| r.flag.key != flag)
        .map(|r| {
            let variants = r.flag.variants.into_iter().map(|v| v.name).collect();
            (r.flag.key, variants)
        })
        .collect())
}

#[allow(
    clippy::too_many_arguments,
    reason = "a page of many parts; a struct would only rename them"
)]
pub(super) fn targeting_markup(
    signed: &Signed,
    (project, flag, environment): (&str, &str, &str),
    loaded: &Loaded,
    version: u64,
    form: &SettingsForm,
    other_flags: &[OtherFlag],
    problems: &Problems,
    notice: Option<&Markup>,
) -> Markup {
    let env = &loaded.env;
    let variants = &loaded.variants;
    let config = &loaded.config;
    let title = format!("Targeting of {flag} in {}", env.name);
    let here = targeting_path(project, flag, environment);
    project_page(
        signed,
        project,
        &title,
        html! {
            (crumbs(project, flag, env, true))
            h1 { "Targeting of " code { (flag) } " in " (env.name) }
            @if let Some(notice) = notice { p.notice role="status" { (notice) } }
            p {
                "The flag is " @if config.enabled { strong { "on" } } @else { strong { "off" } }
                " in " (env.name) " (version " (config.version) "). "
                "Contexts meet, in this order: the prerequisites, the individual targets, the rules from the top, and then the default serve. "
                a href={ (here) "/json" } { "Edit as JSON" }
            }
            @if env.requires_approval {
                p.small { (env.name) " requires approval: saving creates a change request." }
            }
            (field_problems(problems_at(problems, "form")))
            h2 #rules-heading { "Rules" }
            @if config.rules.is_empty() {
                p { "No rules: every context that is not an individual target gets the default serve." }
            }
            ol.rule-list aria-labelledby="rules-heading" {
                @for (j, rule) in config.rules.iter().enumerate() {
                    @let rule_path = format!("{here}/rules/{}", segment(&rule.id));
                    li {
                        div.rule-text {
                            @if !rule.description.is_empty() { strong { (rule.description) } br; }
                            (rule_words(rule))
                        }
                        div.rule-actions {
                            a.button href=(rule_path) aria-label={ "Edit rule " (j + 1) } { "Edit" }
                            @for (direction, word, possible) in [("up", "Move up", j > 0), ("down", "Move down", j + 1 < config.rules.len())] {
                                @if possible {
                                    form method="post" action={ (rule_path) "/move" } {
                                        input type="hidden" name="csrf" value=(signed.csrf);
                                        input type="hidden" name="version" value=(version);
                                        input type="hidden" name="direction" value=(direction);
                                        @if env.requires_comment {
                                            label.sr for={ "comment-" (direction) "-" (j) } { "Comment" }
                                            input id={ "comment-" (direction) "-" (j) } name="comment" required placeholder="comment";
                                        }
                                        button type="submit" aria-label={ (word) ": rule " (j + 1) } { (word) }
                                    }
                                }
                            }
                            a.button.danger href={ (rule_path) "/delete" } aria-label={ "Delete rule " (j + 1) } { "Delete" }
                        }
                    }
                }
            }
            p { a.button.primary href={ (here) "/new-rule" } { "Add rule" } }
            h2 { "Prerequisites, individual targets and the default" }
            form.stack.wide method="post" action=(here) novalidate data-keep-submitter {
                (default_save())
                input type="hidden" name="csrf" value=(signed.csrf);
                input type="hidden" name="version" value=(version);
                input type="hidden" name="prereqs" value=(form.prerequisites.len());
                fieldset {
                    legend { "Prerequisites" }
                    p.small #prereq-help { "This flag applies only while each of these flags serves the named variant to the same context; otherwise it serves the off variant." }
                    datalist #flag-keys {
                        @for (key, _) in other_flags { option value=(key) {} }
                    }
                    // The variants are suggested without a script: a row whose flag is known
                    // lists that flag's (and names them below the field), any other row every
                    // flag's, labelled `flag: variant`.
                    datalist #prereq-variants {
                        @for (key, names) in other_flags {
                            @for name in names { option value=(name) label={ (key) ": " (name) } {} }
                        }
                    }
                    // Only the flags rows name need their own list: a project may have many.
                    @for (i, (key, names)) in other_flags.iter().enumerate() {
                        @if form.prerequisites.iter().any(|(f, _)| f.trim() == key) {
                            datalist id={ "variants-" (i) } {
                                @for name in names { option value=(name) {} }
                            }
                        }
                    }
                    (field_problems(problems_at(problems, "prerequisites")))
                    @for (k, (pflag, pvariant)) in form.prerequisites.iter().enumerate() {
                        @let flag_field = format!("prereq.{k}.flag");
                        @let variant_field = format!("prereq.{k}.variant");
                        @let chosen = other_flags.iter().position(|(key, _)| key == pflag.trim());
                        @let variant_list = match chosen {
                            Some(i) => format!("variants-{i}"),
                            None => "prereq-variants".to_string(),
                        };
                        div.row {
                            div {
                                label for={ "prereq-" (k) "-flag" } { "Flag" }
                                input id={ "prereq-" (k) "-flag" } name=(flag_field) value=(pflag) list="flag-keys"
                                    aria-describedby="prereq-help" aria-invalid=[invalid(problems, &flag_field)];
                                (field_problems(problems_at(problems, &flag_field)))
                            }
                            div {
                                label for={ "prereq-" (k) "-variant" } { "serves variant" }
                                input id={ "prereq-" (k) "-variant" } name=(variant_field) value=(pvariant)
                                    list=(variant_list) aria-describedby=[chosen.map(|_| format!("prereq-{k}-variants"))]
                                    aria-invalid=[invalid(problems, &variant_field)];
                                @if let Some(i) = chosen {
                                    p.small id={ "prereq-" (k) "-variants" } {
                                        (other_flags[i].0) "’s variants: "
                                        @for (n, name) in other_flags[i].1.iter().enumerate() {
                                            @if n > 0 { ", " }
                                            code { (name) }
                                        }
                                    }
                                }
                                (field_problems(problems_at(problems, &variant_field)))
                            }
                        }
                    }
                    p.small { "Leave a row empty to remove it." }
                    button type="submit" name="action" value="add_prerequisite" { "Add another prerequisite" }
                }
                fieldset {
                    legend { "Individual targets" }
                    p.small { "Targeting keys, one per line, that always get a variant (after the prerequisites)." }
                    (field_problems(problems_at(problems, "targets")))
                    @for (i, v) in variants.iter().enumerate() {
                        @let field = format!("targets.{i}");
                        label for={ "targets-" (i) } { "Keys that get " (v.name) }
                        textarea id={ "targets-" (i) } name=(field) rows="3"
                            aria-invalid=[invalid(problems, &field)] { (form.targets.get(i).map(String::as_str).unwrap_or("")) }
                        (field_problems(problems_at(problems, &field)))
                    }
                }
                (serve_fields("default", "Default serve (when no target or rule applies)", variants, &form.default_serve, problems))
                label for="off_variant" { "Off variant (served while the flag is off or a prerequisite fails)" }
                select #off_variant name="off_variant" aria-invalid=[invalid(problems, "off_variant")] {
                    @for v in variants {
                        option value=(v.name) selected[v.name == form.off_variant] { (v.name) }
                    }
                }
                (field_problems(problems_at(problems, "off_variant")))
                (comment_field(env, &form.comment, problems))
                div.actions {
                    button.primary type="submit" name="action" value="save" { "Save" }
                    a href={ "/projects/" (segment(project)) "/flags/" (segment(flag)) } { "Cancel" }
                }
            }
        },
    )
}

async fn save_targeting(
    State(state): State<AppState>,
    Path((project, flag, environment)): Path<(String, String, String)>,
    headers: HeaderMap,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Response {
    let fields = Fields(pairs);
    let signed = match form_caller(&state, &headers, fields.get("csrf")).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let path = (project.as_str(), flag.as_str(), environment.as_str());
    let loaded = match load(&state, &signed.caller, path).await {
        Ok(loaded) => loaded,
        Err(e) => return error_page(e),
    };
    let others = match other_flags(&state, &project, &flag).await {
        Ok(others) => others,
        Err(e) => return error_page(e),
    };
    let version: u64 = fields.get("version").parse().unwrap_or(0);
    let mut form = SettingsForm::read(&fields, &loaded.variants);
    if fields.get("action") == "add_prerequisite" {
        form.prerequisites.push(Default::default());
        return html_response(
            StatusCode::OK,
            targeting_markup(
                &signed,
                path,
                &loaded,
                version,
                &form,
                &others,
                &Problems::new(),
                None,
            ),
        );
    }
    let (config, mut problems, rows) = form.apply(loaded.config.clone(), &loaded.variants);
    let field = |d: &Diagnostic| settings_field(&d.path, &config, &loaded.variants, &rows);
    let status = if problems.is_empty() {
        match write(
            &state,
            &signed.caller,
            path,
            version,
            config.clone(),
            &form.comment,
        )
        .await
        {
            Ok(written) => return saved_redirect(path, written, "saved"),
            Err(refused) => match refusal(&mut problems, refused, |problems, d| {
                add(problems, field(&d), d.message)
            }) {
                Ok(status) => status,
                Err(e) => return error_page(e),
            },
        }
    } else {
        // Every problem at once: the engine's too, though the form's own stop the write.
        if let Err(ApiError::Invalid(diagnostics)) =
            api::validate_config(&state, &project, &environment, &flag, &config).await
        {
            for d in &diagnostics {
                add(&mut problems, field(d), d.message.clone());
            }
        }
        StatusCode::UNPROCESSABLE_ENTITY
    };
    html_response(
        status,
        targeting_markup(
            &signed, path, &loaded, version, &form, &others, &problems, None,
        ),
    )
}
