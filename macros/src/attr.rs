//! Parsing of the field attributes `#[layer(...)]` and `#[likelihood(...)]`.
//!
//! Each option is parsed on its own so that one bad option does not hide the next: a mistake is
//! recorded in the [`Ctxt`] and parsing carries on. A key given twice, and an attribute given twice,
//! are errors on the second occurrence.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, ExprCall, Lit, Meta, Path, Token, UnOp};

use crate::ctxt::Ctxt;
use crate::symbol::{self, Symbol, *};

/// How many prior parameters a layer has (mirrors `weightspace::Granularity`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Granularity {
    Layer,
    Unit,
    Weight,
}

impl Granularity {
    pub fn variant(self) -> &'static str {
        match self {
            Granularity::Layer => "Layer",
            Granularity::Unit => "Unit",
            Granularity::Weight => "Weight",
        }
    }
}

/// A number written in the declaration, with the tokens that wrote it (for error spans).
#[derive(Clone)]
pub struct Number {
    pub value: f64,
    pub tokens: TokenStream,
}

/// A hyperparameter: a plain number (fixed) or `Learned(number)`.
#[derive(Clone)]
pub struct Hyper {
    pub learned: bool,
    pub number: Number,
}

/// `Normal(loc, scale)` as written.
#[derive(Clone)]
pub struct NormalExpr {
    pub loc: Hyper,
    pub scale: Hyper,
}

/// The options of one `#[layer(...)]` attribute. Absent or invalid options are `None`.
pub struct LayerAttr {
    pub prior: Option<NormalExpr>,
    pub per: Option<Granularity>,
    pub fan_in_scaled: bool,
    pub bias_prior: Option<NormalExpr>,
    pub bias_per: Option<Granularity>,
}

/// The options of one `#[likelihood(...)]` attribute.
pub struct LikelihoodAttr {
    /// `upper = <number>`, with the key for error spans.
    pub upper: Option<(Path, Number)>,
}

/// What a field's attributes make of it.
pub enum FieldRole {
    Layer(LayerAttr),
    Likelihood(LikelihoodAttr),
}

/// A field's attributes, sorted into ours and everyone else's.
pub struct FieldAttrs<'a> {
    /// `None` when the field has neither `#[layer]` nor `#[likelihood]`.
    pub role: Option<FieldRole>,
    /// Every attribute that is not ours (doc comments included), in order.
    pub others: Vec<&'a Attribute>,
}

/// Whether `attr` is one of the field attributes this macro consumes.
pub fn is_ours(attr: &Attribute) -> bool {
    attr.path() == LAYER || attr.path() == LIKELIHOOD
}

/// A single option value, remembering that it was set so a second setting is reported.
struct Slot<'c, T> {
    cx: &'c Ctxt,
    name: Symbol,
    seen: bool,
    value: Option<T>,
}

impl<'c, T> Slot<'c, T> {
    fn new(cx: &'c Ctxt, name: Symbol) -> Self {
        Slot { cx, name, seen: false, value: None }
    }

    /// Records the option at `key`; `value` is `None` when it was given but invalid (already
    /// reported). Reports a duplicate at the second key.
    fn set(&mut self, key: &Path, value: Option<T>) {
        if self.seen {
            self.cx.error_spanned_by(key, format!("duplicate option `{}`; give each option once", self.name));
            return;
        }
        self.seen = true;
        self.value = value;
    }

    fn get(self) -> Option<T> {
        self.value
    }
}

/// Sorts a field's attributes and parses ours. Two of ours on one field are an error on the second.
pub fn field_attrs<'a>(cx: &Ctxt, attrs: &'a [Attribute]) -> FieldAttrs<'a> {
    let mut role: Option<(FieldRole, Symbol)> = None;
    let mut others = Vec::new();
    for attr in attrs {
        let this = if attr.path() == LAYER {
            LAYER
        } else if attr.path() == LIKELIHOOD {
            LIKELIHOOD
        } else {
            others.push(attr);
            continue;
        };
        let parsed = if this == LAYER { FieldRole::Layer(layer_attr(cx, attr)) } else { FieldRole::Likelihood(likelihood_attr(cx, attr)) };
        match &role {
            None => role = Some((parsed, this)),
            Some((_, first)) if *first == this => {
                cx.error_spanned_by(attr, format!("duplicate `#[{this}]` attribute; put all options in one `#[{this}(...)]`"))
            }
            Some((_, first)) => {
                cx.error_spanned_by(attr, format!("a field is either a layer or the likelihood; it already has `#[{first}]`"))
            }
        }
    }
    FieldAttrs { role: role.map(|(r, _)| r), others }
}

/// Options of `#[layer]`, `#[layer(...)]`.
fn layer_attr(cx: &Ctxt, attr: &Attribute) -> LayerAttr {
    let mut prior = Slot::new(cx, PRIOR);
    let mut per = Slot::new(cx, PER);
    let mut fan_in_scaled = Slot::new(cx, FAN_IN_SCALED);
    let mut bias_prior = Slot::new(cx, BIAS_PRIOR);
    let mut bias_per: Slot<(Path, Granularity)> = Slot::new(cx, BIAS_PER);

    if let Some(list) = attr_list(cx, attr) {
        let parsed = list.parse_nested_meta(|meta| {
            if meta.path == PRIOR {
                let expr: Expr = meta.value()?.parse()?;
                prior.set(&meta.path, normal_expr(cx, &expr));
            } else if meta.path == PER {
                let expr: Expr = meta.value()?.parse()?;
                per.set(&meta.path, granularity(cx, &expr, PER, &[GRAN_LAYER, GRAN_UNIT, GRAN_WEIGHT]));
            } else if meta.path == FAN_IN_SCALED {
                if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                    skip_value(&meta)?;
                    cx.error_spanned_by(&meta.path, "`fan_in_scaled` is a flag and takes no value; write `fan_in_scaled`");
                }
                fan_in_scaled.set(&meta.path, Some(()));
            } else if meta.path == BIAS_PRIOR {
                let expr: Expr = meta.value()?.parse()?;
                bias_prior.set(&meta.path, normal_expr(cx, &expr));
            } else if meta.path == BIAS_PER {
                let expr: Expr = meta.value()?.parse()?;
                let g = granularity(cx, &expr, BIAS_PER, &[GRAN_LAYER, GRAN_UNIT]);
                bias_per.set(&meta.path, g.map(|g| (meta.path.clone(), g)));
            } else {
                unknown_option(cx, &meta, LAYER, &LAYER_OPTIONS);
                skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(err) = parsed {
            cx.syn_error(err);
        }
    }

    let bias_prior = bias_prior.get();
    let bias_per = match bias_per.get() {
        Some((key, _)) if bias_prior.is_none() => {
            cx.error_spanned_by(
                key,
                "`bias_per` sets the granularity of a separate bias prior; add `bias_prior = Normal(..)` or remove `bias_per`",
            );
            None
        }
        other => other.map(|(_, g)| g),
    };
    LayerAttr { prior: prior.get(), per: per.get(), fan_in_scaled: fan_in_scaled.get().is_some(), bias_prior, bias_per }
}

/// Options of `#[likelihood]`, `#[likelihood(...)]`.
fn likelihood_attr(cx: &Ctxt, attr: &Attribute) -> LikelihoodAttr {
    let mut upper = Slot::new(cx, UPPER);
    if let Some(list) = attr_list(cx, attr) {
        let parsed = list.parse_nested_meta(|meta| {
            if meta.path == UPPER {
                let expr: Expr = meta.value()?.parse()?;
                let value = number(cx, &expr).and_then(|n| {
                    if n.value > 0.0 {
                        Some((meta.path.clone(), n))
                    } else {
                        cx.error_spanned_by(&n.tokens, format!("`upper` must be > 0, got {}", n.value));
                        None
                    }
                });
                upper.set(&meta.path, value);
            } else {
                unknown_option(cx, &meta, LIKELIHOOD, &LIKELIHOOD_OPTIONS);
                skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(err) = parsed {
            cx.syn_error(err);
        }
    }
    LikelihoodAttr { upper: upper.get() }
}

/// The attribute itself when it carries a list (`#[layer(...)]`); `None` for a bare `#[layer]`.
fn attr_list<'a>(cx: &Ctxt, attr: &'a Attribute) -> Option<&'a Attribute> {
    match &attr.meta {
        Meta::Path(_) => None,
        Meta::List(_) => Some(attr),
        Meta::NameValue(nv) => {
            let name = nv.path.to_token_stream();
            cx.error_spanned_by(attr, format!("expected `#[{name}]` or `#[{name}(option, ...)]`"));
            None
        }
    }
}

fn unknown_option(cx: &Ctxt, meta: &ParseNestedMeta, attr: Symbol, options: &[Symbol]) {
    let names: Vec<&str> = options.iter().map(|s| s.0).collect();
    let word = meta.path.to_token_stream().to_string().replace(' ', "");
    let message = format!("unknown `#[{attr}]` option `{word}`; expected {}", symbol::one_of(&names));
    cx.error_spanned_by(&meta.path, symbol::with_hint(message, &word, names.iter().copied()));
}

/// Consumes `= value` or `(...)` after an option that is being rejected.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        let _: Expr = meta.value()?.parse()?;
    } else if meta.input.peek(syn::token::Paren) {
        let _: proc_macro2::Group = meta.input.parse()?;
    }
    Ok(())
}

/// `layer`, `unit` or `weight` (those of `allowed`).
fn granularity(cx: &Ctxt, expr: &Expr, key: Symbol, allowed: &[Symbol]) -> Option<Granularity> {
    let names: Vec<&str> = allowed.iter().map(|s| s.0).collect();
    let expected = symbol::one_of(&names);
    let expr = ungroup(expr);
    let ident = match expr {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident(),
        Expr::Lit(l) => {
            if let Lit::Str(s) = &l.lit {
                cx.error_spanned_by(expr, format!("write `{key} = {}` without quotes", s.value()));
                return None;
            }
            None
        }
        _ => None,
    };
    let Some(ident) = ident else {
        cx.error_spanned_by(expr, format!("`{key}` expects {expected}"));
        return None;
    };
    let found = if ident == GRAN_LAYER {
        Granularity::Layer
    } else if ident == GRAN_UNIT {
        Granularity::Unit
    } else if ident == GRAN_WEIGHT {
        Granularity::Weight
    } else {
        let message = format!("unknown granularity `{ident}` for `{key}`; expected {expected}");
        cx.error_spanned_by(ident, symbol::with_hint(message, &ident.to_string(), names.iter().copied()));
        return None;
    };
    if !allowed.iter().any(|s| ident == *s) {
        cx.error_spanned_by(ident, format!("`{key} = {ident}` is not supported; expected {expected}"));
        return None;
    }
    Some(found)
}

/// `Normal(loc, scale)`; the scale must be positive.
fn normal_expr(cx: &Ctxt, expr: &Expr) -> Option<NormalExpr> {
    const EXPECTED: &str = "expected a prior such as `Normal(0.0, 1.0)` or `Normal(0.0, Learned(1.0))`";
    let expr = ungroup(expr);
    let call = match expr {
        Expr::Call(call) => call,
        Expr::Path(p) if p.path == NORMAL => {
            cx.error_spanned_by(expr, "`Normal` needs its parameters: `Normal(loc, scale)`");
            return None;
        }
        _ => {
            cx.error_spanned_by(expr, EXPECTED);
            return None;
        }
    };
    let family = match ungroup(&call.func) {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident(),
        _ => None,
    };
    let Some(family) = family else {
        cx.error_spanned_by(&call.func, EXPECTED);
        return None;
    };
    if family != NORMAL {
        cx.error_spanned_by(family, format!("unknown prior family `{family}`; the supported family is `Normal(loc, scale)`"));
        return None;
    }
    if call.args.len() != 2 {
        cx.error_spanned_by(call, format!("`Normal` takes 2 arguments, `Normal(loc, scale)`, but {} were given", call.args.len()));
        return None;
    }
    let loc = hyper(cx, &call.args[0]);
    let scale = hyper(cx, &call.args[1]).and_then(|s| {
        if s.number.value > 0.0 {
            Some(s)
        } else {
            let what = if s.learned { "the initial prior scale" } else { "the prior scale" };
            cx.error_spanned_by(&s.number.tokens, format!("{what} must be > 0, got {}", s.number.value));
            None
        }
    });
    Some(NormalExpr { loc: loc?, scale: scale? })
}

/// A number, `Learned(number)` or `Fixed(number)`.
fn hyper(cx: &Ctxt, expr: &Expr) -> Option<Hyper> {
    let expr = ungroup(expr);
    if let Expr::Call(ExprCall { func, args, .. }) = expr {
        let wrapper = match ungroup(func) {
            Expr::Path(p) if p.qself.is_none() => p.path.get_ident(),
            _ => None,
        };
        let learned = match wrapper {
            Some(w) if w == LEARNED => true,
            Some(w) if w == FIXED => false,
            _ => {
                cx.error_spanned_by(func, "expected a number, `Learned(<initial value>)` or `Fixed(<value>)`");
                return None;
            }
        };
        if args.len() != 1 {
            cx.error_spanned_by(expr, "`Learned` and `Fixed` take one number, e.g. `Learned(1.0)`");
            return None;
        }
        return number(cx, &args[0]).map(|number| Hyper { learned, number });
    }
    number(cx, expr).map(|number| Hyper { learned: false, number })
}

/// A finite float or integer literal, optionally negated.
pub fn number(cx: &Ctxt, expr: &Expr) -> Option<Number> {
    let expr = ungroup(expr);
    let (negative, inner) = match expr {
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => (true, ungroup(&u.expr)),
        other => (false, other),
    };
    let parsed = match inner {
        Expr::Lit(l) => match &l.lit {
            Lit::Float(f) => Some(f.base10_parse::<f64>()),
            Lit::Int(i) => Some(i.base10_digits().parse::<f64>().map_err(|e| syn::Error::new(i.span(), e))),
            _ => None,
        },
        _ => None,
    };
    match parsed {
        None => {
            cx.error_spanned_by(expr, "expected a number such as `1.0`");
            None
        }
        Some(Err(err)) => {
            cx.syn_error(err);
            None
        }
        Some(Ok(v)) if !v.is_finite() => {
            cx.error_spanned_by(expr, "expected a finite number");
            None
        }
        Some(Ok(v)) => Some(Number { value: if negative { -v } else { v }, tokens: expr.to_token_stream() }),
    }
}

/// Looks through the invisible groups and parentheses that `macro_rules!` expansions add.
fn ungroup(mut expr: &Expr) -> &Expr {
    loop {
        match expr {
            Expr::Group(g) => expr = &g.expr,
            Expr::Paren(p) => expr = &p.expr,
            _ => return expr,
        }
    }
}
