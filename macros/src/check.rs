//! Cross-field rules: one likelihood, at least one layer, consecutive widths that agree, an output
//! width the likelihood can use, and noise bounds that make sense.

use std::collections::HashSet;

use syn::ext::IdentExt;

use crate::ast::{Container, LikelihoodKind, Param, Role};
use crate::ctxt::Ctxt;

pub fn check(cx: &Ctxt, cont: &Container) {
    check_unique_names(cx, cont);
    check_likelihood_count(cx, cont);
    check_layers(cx, cont);
    check_likelihood(cx, cont);
}

fn check_unique_names(cx: &Ctxt, cont: &Container) {
    let mut seen = HashSet::new();
    for f in &cont.fields {
        if !seen.insert(f.name.as_str()) {
            cx.error_spanned_by(f.ident, format!("field `{}` is declared twice", f.name));
        }
    }
}

/// Exactly one `#[likelihood]`: none is an error at the struct's name, a second one at its field.
fn check_likelihood_count(cx: &Ctxt, cont: &Container) {
    if cont.fields.is_empty() && cx.has_errors() {
        // A tuple or unit struct, already reported.
        return;
    }
    let mut first: Option<&str> = None;
    for f in &cont.fields {
        if matches!(f.role, Role::Likelihood(_) | Role::BadLikelihood) {
            match first {
                None => first = Some(&f.name),
                Some(name) => cx.error_spanned_by(
                    f.ident,
                    format!("a network has exactly one likelihood, and `{name}` already is; remove `#[likelihood]` here"),
                ),
            }
        }
    }
    if first.is_none() {
        cx.error_spanned_by(
            cont.ident,
            format!("`{}` has no likelihood; add a field such as `#[likelihood] noise: Gaussian<Learned<0.1>>`", cont.ident.unraw()),
        );
    }
}

/// At least one layer, and each layer takes as many inputs as the one before it produces.
fn check_layers(cx: &Ctxt, cont: &Container) {
    if cont.fields.is_empty() && cx.has_errors() {
        return;
    }
    let layers: Vec<_> = cont.fields.iter().filter(|f| matches!(f.role, Role::Layer(_) | Role::BadLayer)).collect();
    if layers.is_empty() {
        cx.error_spanned_by(
            cont.ident,
            format!("`{}` has no layers; add a field such as `#[layer(prior = Normal(0.0, 1.0))] out: Dense<1, 1>`", cont.ident.unraw()),
        );
        return;
    }
    for pair in layers.windows(2) {
        let (Role::Layer(prev), Role::Layer(next)) = (&pair[0].role, &pair[1].role) else {
            continue;
        };
        if prev.d_out.value != next.d_in.value {
            cx.error_spanned_by(
                next.d_in.expr,
                format!(
                    "layer `{}` takes {} inputs but `{}` produces {}; the widths of consecutive layers must match",
                    pair[1].name, next.d_in.value, pair[0].name, prev.d_out.value
                ),
            );
        }
    }
    for (f, l) in cont.layers() {
        let weights = l.d_in.value.checked_add(1).and_then(|i| i.checked_mul(l.d_out.value));
        if !matches!(weights, Some(w) if w <= isize::MAX as usize) {
            cx.error_spanned_by(f.ty, format!("layer `{}` is too large to address", f.name));
        }
    }
}

/// The output width suits the likelihood, and `upper` goes with a learned Gaussian noise below it.
fn check_likelihood(cx: &Ctxt, cont: &Container) {
    let Some((field, lik)) = cont.likelihood() else {
        return;
    };
    let last = cont.fields.iter().rev().find(|f| matches!(f.role, Role::Layer(_) | Role::BadLayer));
    if let Some(last) = last {
        if let Role::Layer(layer) = &last.role {
            match lik.kind {
                LikelihoodKind::Bernoulli if layer.d_out.value != 1 => cx.error_spanned_by(
                    layer.d_out.expr,
                    format!(
                        "a `Bernoulli` likelihood needs one output (the logit), but the last layer `{}` produces {}",
                        last.name, layer.d_out.value
                    ),
                ),
                LikelihoodKind::Categorical if layer.d_out.value < 2 => cx.error_spanned_by(
                    layer.d_out.expr,
                    format!(
                        "a `Categorical` likelihood needs one output per class (at least 2), but the last layer `{}` produces {}; for two classes with one logit use `Bernoulli`",
                        last.name, layer.d_out.value
                    ),
                ),
                _ => {}
            }
        }
    }
    if let Some((key, upper)) = &lik.upper {
        match lik.kind {
            LikelihoodKind::Gaussian { scale: Param::Learned(init) } => {
                if upper.value <= init {
                    cx.error_spanned_by(
                        &upper.tokens,
                        format!("`upper` must be greater than the initial noise scale {init}, got {}", upper.value),
                    );
                }
            }
            LikelihoodKind::Gaussian { scale: Param::Fixed(_) } => {
                cx.error_spanned_by(key, format!("`upper` bounds a learned noise scale; `{}` has a fixed one", field.name))
            }
            _ => cx.error_spanned_by(key, "`upper` applies only to `Gaussian<Learned<..>>` likelihoods"),
        }
    }
}
