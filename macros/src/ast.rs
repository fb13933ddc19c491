//! The internal model of a declaration: layers with widths, activations and priors, and the
//! likelihood. It keeps the user's syn nodes so that later stages can point errors and generated
//! code at the user's own tokens.

use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Attribute, Expr, Fields, GenericArgument, Ident, ItemStruct, Lit, Meta, PathArguments, Type, Visibility};

use crate::attr::{self, FieldRole, Granularity, Hyper, LayerAttr, LikelihoodAttr, NormalExpr, Number};
use crate::ctxt::Ctxt;
use crate::symbol::{self, *};

/// The activations a layer may name, spelled as in a declaration (mirrors
/// `weightspace::Activation::ALL`).
pub const ACTIVATIONS: [&str; 7] = ["Identity", "Tanh", "Relu", "Sigmoid", "Softplus", "Silu", "Gelu"];

/// The declared struct.
pub struct Container<'a> {
    pub ident: &'a Ident,
    pub vis: &'a Visibility,
    /// Attributes on the struct other than ours, doc comments included (`Clone` and `Debug` removed
    /// from derives).
    pub attrs: Vec<Attribute>,
    /// Fields in declaration order.
    pub fields: Vec<Field<'a>>,
}

/// One declared field.
pub struct Field<'a> {
    pub ident: &'a Ident,
    /// The name used in the architecture and parameter paths (`r#` stripped).
    pub name: String,
    pub vis: &'a Visibility,
    /// The declared type, for spans.
    pub ty: &'a Type,
    /// Attributes other than ours, doc comments included.
    pub attrs: Vec<&'a Attribute>,
    pub role: Role<'a>,
}

/// What a field is. The `Bad*` variants are fields whose type could not be read (already
/// reported); they still count as a layer or the likelihood in the cross-field checks.
pub enum Role<'a> {
    Layer(Layer<'a>),
    BadLayer,
    Likelihood(Likelihood),
    BadLikelihood,
    /// No `#[layer]` or `#[likelihood]` (already reported).
    Unmarked,
}

/// A dense layer `Dense<I, O, Act>` with its priors.
pub struct Layer<'a> {
    pub d_in: Width<'a>,
    pub d_out: Width<'a>,
    pub activation: &'static str,
    pub prior: Prior,
    pub bias_prior: Option<Prior>,
}

/// A width written as an integer literal.
pub struct Width<'a> {
    pub value: usize,
    pub expr: &'a Expr,
}

/// A hyperparameter, as the runtime `Param`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Param {
    Fixed(f64),
    Learned(f64),
}

/// A Normal prior, as the runtime `NormalSpec`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Prior {
    pub loc: Param,
    pub scale: Param,
    pub per: Granularity,
    pub fan_in_scaled: bool,
}

impl Prior {
    /// `Normal(0.0, 1.0)`, one pair per layer.
    pub const STANDARD: Prior = Prior { loc: Param::Fixed(0.0), scale: Param::Fixed(1.0), per: Granularity::Layer, fan_in_scaled: false };
}

/// The observation model.
pub struct Likelihood {
    pub kind: LikelihoodKind,
    /// `upper = ...` from the attribute, with the key.
    pub upper: Option<(syn::Path, Number)>,
}

#[derive(Copy, Clone, Debug, PartialEq)]
pub enum LikelihoodKind {
    Gaussian { scale: Param },
    Categorical,
    Bernoulli,
}

impl<'a> Container<'a> {
    /// Reads a struct declaration, recording every mistake in `cx`. Returns the model of whatever
    /// could be read, so that fallback code can still name the fields that were fine.
    pub fn from_ast(cx: &Ctxt, item: &'a ItemStruct) -> Container<'a> {
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            cx.error_spanned_by(
                &item.generics,
                "a `#[bnn]` struct takes no generic parameters; the macro adds the dtype `E` and device `D` itself",
            );
        }
        let mut attrs = Vec::new();
        for a in &item.attrs {
            if attr::is_ours(a) {
                cx.error_spanned_by(a, format!("`#[{}]` belongs on a field of the struct", a.path().to_token_stream()));
            } else if let Some(kept) = check_derive(cx, a) {
                attrs.push(kept);
            }
        }
        let (struct_token, ident, fields) = (&item.struct_token, &item.ident, &item.fields);
        let fields = match &item.fields {
            Fields::Named(named) => named.named.iter().filter_map(|f| Field::from_ast(cx, f)).collect(),
            Fields::Unnamed(_) => {
                cx.error_spanned_by(
                    quote::quote!(#struct_token #ident #fields),
                    "`#[bnn]` needs a struct with named fields (one per layer, plus the likelihood); found a tuple struct",
                );
                Vec::new()
            }
            Fields::Unit => {
                cx.error_spanned_by(
                    quote::quote!(#struct_token #ident),
                    "`#[bnn]` needs a struct with named fields (one per layer, plus the likelihood); found a unit struct",
                );
                Vec::new()
            }
        };
        Container { ident: &item.ident, vis: &item.vis, attrs, fields }
    }

    /// The layers that were read successfully, in order, with their field.
    pub fn layers(&self) -> impl Iterator<Item = (&Field<'a>, &Layer<'a>)> {
        self.fields.iter().filter_map(|f| match &f.role {
            Role::Layer(l) => Some((f, l)),
            _ => None,
        })
    }

    /// The likelihood field, if one was read successfully.
    pub fn likelihood(&self) -> Option<(&Field<'a>, &Likelihood)> {
        self.fields.iter().find_map(|f| match &f.role {
            Role::Likelihood(l) => Some((f, l)),
            _ => None,
        })
    }
}

/// `#[derive(Clone)]` or `#[derive(Debug)]` would clash with the derives the macro adds: reports
/// them and returns the attribute without them (`None` when nothing is left).
fn check_derive(cx: &Ctxt, attr: &Attribute) -> Option<Attribute> {
    if attr.path() != DERIVE {
        return Some(attr.clone());
    }
    let Ok(paths) = attr.parse_args_with(syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated) else {
        return Some(attr.clone());
    };
    let mut kept = Vec::new();
    for p in &paths {
        match p.segments.last() {
            Some(last) if last.ident == "Clone" || last.ident == "Debug" => {
                cx.error_spanned_by(p, format!("`#[bnn]` already derives `{}` for the model; remove it here", last.ident));
            }
            _ => kept.push(p),
        }
    }
    if kept.is_empty() {
        return None;
    }
    let mut attr = attr.clone();
    if let Meta::List(list) = &mut attr.meta {
        list.tokens = quote::quote!(#(#kept),*);
    }
    Some(attr)
}

impl<'a> Field<'a> {
    /// `None` only for a field without a name, which `Fields::Named` never holds.
    fn from_ast(cx: &Ctxt, field: &'a syn::Field) -> Option<Field<'a>> {
        let ident = field.ident.as_ref()?;
        let attrs = attr::field_attrs(cx, &field.attrs);
        let role = match attrs.role {
            Some(FieldRole::Layer(a)) => match dense(cx, &field.ty, &a) {
                Some(layer) => Role::Layer(layer),
                None => Role::BadLayer,
            },
            Some(FieldRole::Likelihood(a)) => match likelihood(cx, &field.ty, a) {
                Some(lik) => Role::Likelihood(lik),
                None => Role::BadLikelihood,
            },
            None => {
                let hint = match type_name(&field.ty) {
                    Some(t) if LIKELIHOODS.iter().any(|s| t == s.0) => "; this looks like the likelihood: add `#[likelihood]`",
                    Some(t) if t == DENSE.0 => "; this looks like a layer: add `#[layer(prior = Normal(0.0, 1.0))]`",
                    _ => "",
                };
                cx.error_spanned_by(ident, format!("field `{}` needs `#[layer(...)]` or `#[likelihood]`{hint}", ident.unraw()));
                Role::Unmarked
            }
        };
        Some(Field { ident, name: ident.unraw().to_string(), vis: &field.vis, ty: &field.ty, attrs: attrs.others, role })
    }
}

/// The last path segment's identifier of a plain path type.
fn type_name(ty: &Type) -> Option<String> {
    match untype(ty) {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

fn untype(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(g) => ty = &g.elem,
            Type::Paren(p) => ty = &p.elem,
            _ => return ty,
        }
    }
}

/// `Dense<I, O>` or `Dense<I, O, Act>` plus the `#[layer]` options.
fn dense<'a>(cx: &Ctxt, ty: &'a Type, attr: &LayerAttr) -> Option<Layer<'a>> {
    const EXPECTED: &str = "a layer's type must be `Dense<IN, OUT>` or `Dense<IN, OUT, Activation>`";
    let segment = match untype(ty) {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        _ => None,
    };
    let Some(segment) = segment.filter(|s| s.ident == DENSE) else {
        cx.error_spanned_by(ty, format!("{EXPECTED}, e.g. `Dense<1, 50, Tanh>`"));
        return None;
    };
    let args: Vec<&GenericArgument> = match &segment.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().collect(),
        _ => Vec::new(),
    };
    if args.len() != 2 && args.len() != 3 {
        cx.error_spanned_by(ty, format!("{EXPECTED}; found {} generic arguments", args.len()));
        return None;
    }
    let d_in = width(cx, args[0]);
    let d_out = width(cx, args[1]);
    let activation = match args.get(2) {
        None => Some("Identity"),
        Some(arg) => activation(cx, arg),
    };
    let prior = prior(attr.prior.as_ref(), attr.per.unwrap_or(Granularity::Layer), attr.fan_in_scaled);
    let bias_prior = attr.bias_prior.as_ref().map(|b| prior_of(b, attr.bias_per.unwrap_or(Granularity::Layer), false));
    Some(Layer { d_in: d_in?, d_out: d_out?, activation: activation?, prior, bias_prior })
}

fn prior(expr: Option<&NormalExpr>, per: Granularity, fan_in_scaled: bool) -> Prior {
    match expr {
        Some(e) => prior_of(e, per, fan_in_scaled),
        None => Prior { per, fan_in_scaled, ..Prior::STANDARD },
    }
}

fn prior_of(expr: &NormalExpr, per: Granularity, fan_in_scaled: bool) -> Prior {
    Prior { loc: param(&expr.loc), scale: param(&expr.scale), per, fan_in_scaled }
}

fn param(h: &Hyper) -> Param {
    if h.learned {
        Param::Learned(h.number.value)
    } else {
        Param::Fixed(h.number.value)
    }
}

/// An integer-literal width, at least 1.
fn width<'a>(cx: &Ctxt, arg: &'a GenericArgument) -> Option<Width<'a>> {
    const EXPECTED: &str = "layer widths must be integer literals, e.g. `Dense<1, 50>`";
    let expr = match arg {
        GenericArgument::Const(e) => e,
        other => {
            cx.error_spanned_by(other, format!("{EXPECTED}; found `{}`", other.to_token_stream()));
            return None;
        }
    };
    let lit = match expr {
        Expr::Lit(l) => match &l.lit {
            Lit::Int(i) => i,
            _ => {
                cx.error_spanned_by(expr, format!("{EXPECTED}; found `{}`", expr.to_token_stream()));
                return None;
            }
        },
        _ => {
            cx.error_spanned_by(expr, format!("{EXPECTED}; found `{}`", expr.to_token_stream()));
            return None;
        }
    };
    match lit.base10_parse::<usize>() {
        Ok(0) => {
            cx.error_spanned_by(expr, "a layer width must be at least 1");
            None
        }
        Ok(value) => Some(Width { value, expr }),
        Err(err) => {
            cx.syn_error(err);
            None
        }
    }
}

/// One of [`ACTIVATIONS`].
fn activation(cx: &Ctxt, arg: &GenericArgument) -> Option<&'static str> {
    let expected = symbol::one_of(&ACTIVATIONS);
    let ident = match arg {
        GenericArgument::Type(t) => match untype(t) {
            Type::Path(p) if p.qself.is_none() => p.path.get_ident(),
            _ => None,
        },
        _ => None,
    };
    let Some(ident) = ident else {
        cx.error_spanned_by(arg, format!("expected an activation: {expected}"));
        return None;
    };
    let name = ident.to_string();
    match ACTIVATIONS.iter().find(|a| **a == name) {
        Some(a) => Some(a),
        None => {
            let message = format!("unknown activation `{name}`; expected one of {expected}");
            cx.error_spanned_by(ident, symbol::with_hint(message, &name, ACTIVATIONS));
            None
        }
    }
}

/// `Gaussian<Learned<0.1>>`, `Gaussian<Learned>`, `Gaussian<Fixed<0.1>>`, `Categorical` or
/// `Bernoulli`.
fn likelihood(cx: &Ctxt, ty: &Type, attr: LikelihoodAttr) -> Option<Likelihood> {
    let expected = symbol::one_of(&LIKELIHOODS.map(|s| s.0));
    let segment = match untype(ty) {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        _ => None,
    };
    let Some(segment) = segment else {
        cx.error_spanned_by(ty, format!("expected a likelihood: {expected}"));
        return None;
    };
    let name = &segment.ident;
    let args: Vec<&GenericArgument> = match &segment.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().collect(),
        _ => Vec::new(),
    };
    let kind = if name == GAUSSIAN {
        const NOISE: &str = "`Gaussian` needs its noise scale: `Gaussian<Fixed<0.1>>`, `Gaussian<Learned<0.1>>` or `Gaussian<Learned>`";
        let [arg] = args.as_slice() else {
            cx.error_spanned_by(ty, NOISE);
            return None;
        };
        LikelihoodKind::Gaussian { scale: noise(cx, arg, NOISE)? }
    } else if name == CATEGORICAL || name == BERNOULLI {
        if !args.is_empty() {
            cx.error_spanned_by(&segment.arguments, format!("`{name}` takes no parameters"));
            return None;
        }
        if name == CATEGORICAL {
            LikelihoodKind::Categorical
        } else {
            LikelihoodKind::Bernoulli
        }
    } else {
        let message = format!("unknown likelihood `{name}`; expected {expected}");
        cx.error_spanned_by(name, symbol::with_hint(message, &name.to_string(), LIKELIHOODS.map(|s| s.0)));
        return None;
    };
    Some(Likelihood { kind, upper: attr.upper })
}

/// `Learned`, `Learned<v>` or `Fixed<v>`, `v > 0`.
fn noise(cx: &Ctxt, arg: &GenericArgument, expected: &str) -> Option<Param> {
    let segment = match arg {
        GenericArgument::Type(t) => match untype(t) {
            Type::Path(p) if p.qself.is_none() && p.path.segments.len() == 1 => p.path.segments.first(),
            _ => None,
        },
        _ => None,
    };
    let Some(segment) = segment.filter(|s| s.ident == LEARNED || s.ident == FIXED) else {
        cx.error_spanned_by(arg, expected);
        return None;
    };
    let learned = segment.ident == LEARNED;
    let args: Vec<&GenericArgument> = match &segment.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().collect(),
        _ => Vec::new(),
    };
    let number = match args.as_slice() {
        [] if learned => return Some(Param::Learned(1.0)),
        [GenericArgument::Const(e)] => attr::number(cx, e)?,
        _ => {
            cx.error_spanned_by(arg, expected);
            return None;
        }
    };
    if number.value <= 0.0 {
        let what = if learned { "the initial noise scale" } else { "the noise scale" };
        cx.error_spanned_by(&number.tokens, format!("{what} must be > 0, got {}", number.value));
        return None;
    }
    Some(if learned { Param::Learned(number.value) } else { Param::Fixed(number.value) })
}
