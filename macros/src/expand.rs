//! Code generation: three structs (model, guide, typed weights), one `Architecture` constant, one
//! dfdx `TensorCollection` impl per struct, and the core traits, each method a list of per-field
//! calls into core. No algorithm lives here.
//!
//! Every runtime path goes through `::weightspace::__private`; internal names start with `__`; impls
//! are wrapped in `const _: () = { ... };`.

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;

use crate::ast::{Container, Field, Layer, Likelihood, LikelihoodKind, Param, Prior, Role};

/// The runtime's private module.
pub fn rt() -> TokenStream {
    quote!(::weightspace::__private)
}

/// `{Model}Guide`, carrying the user's span.
pub fn guide_ident(cont: &Container) -> Ident {
    format_ident!("{}Guide", cont.ident, span = cont.ident.span())
}

/// `{Model}Weights`, carrying the user's span.
pub fn weights_ident(cont: &Container) -> Ident {
    format_ident!("{}Weights", cont.ident, span = cont.ident.span())
}

/// The generated code for a declaration that passed every check.
pub fn expand(cont: &Container) -> TokenStream {
    let p = rt();
    let ident = cont.ident;
    let guide = guide_ident(cont);
    let layers: Vec<(&Field, &Layer)> = cont.layers().collect();
    let Some((lik_field, lik)) = cont.likelihood() else {
        // Unreachable after `check`, which requires a likelihood; emit nothing rather than panic.
        return TokenStream::new();
    };
    let n_layers = layers.len();

    let model_struct = model_struct(cont, None, quote!());
    let guide_struct = guide_struct(cont, None);
    let weights_struct = weights_struct(cont, None);

    // The architecture, as data.
    let name = ident.to_string();
    let name = name.strip_prefix("r#").unwrap_or(&name);
    let layer_specs = layers.iter().map(|(f, l)| layer_spec(f, l));
    let lik_name = &lik_field.name;
    let lik_spec = likelihood_spec(lik);
    let arch = quote! {
        const __ARCH: &'static #p::Architecture = &#p::Architecture {
            name: #name,
            layers: &[#(#layer_specs),*],
            likelihood_name: #lik_name,
            likelihood: #lik_spec,
        };
    };

    // `new`: one core constructor per field, blamed on the field's type.
    let mut layer_index = 0usize;
    let inits = cont.fields.iter().filter_map(|f| {
        let fname = f.ident;
        let span = f.ty.span();
        match &f.role {
            Role::Layer(_) => {
                let i = Literal::usize_unsuffixed(layer_index);
                layer_index += 1;
                Some(quote_spanned!(span=> #fname: #p::DensePrior::new(dev, &__ARCH.layers[#i])))
            }
            Role::Likelihood(_) => Some(quote_spanned!(span=> #fname: #p::LikelihoodParams::new(dev, &__ARCH.likelihood))),
            _ => None,
        }
    });
    let new_doc = format!("Builds a `{name}` on `dev` with every prior and likelihood parameter at its declared (initial) value.");

    // dfdx `TensorCollection` for the model: every field is a sub-module named after it.
    let model_fields: Vec<&Field> = cont.fields.iter().filter(|f| matches!(f.role, Role::Layer(_) | Role::Likelihood(_))).collect();
    let model_collection = collection(ident, &model_fields);

    // `Bnn`.
    let lik_ident = lik_field.ident;
    let prior_views = layers.iter().map(|(f, _)| {
        let fname = f.ident;
        quote_spanned!(f.ty.span()=> __v.push(#p::DensePrior::view(&self.#fname)))
    });
    let n_layers_lit = Literal::usize_unsuffixed(n_layers);
    let guide_values_what = format!("guide values for `{name}`");
    let layers_expected = format!("{n_layers} layer{}", if n_layers == 1 { "" } else { "s" });
    let from_values = layers.iter().enumerate().map(|(i, (f, _))| {
        let fname = f.ident;
        let i = Literal::usize_unsuffixed(i);
        quote_spanned!(f.ty.span()=> #fname: #p::NormalParams::from_values(__dev, &__values[#i].0, &__values[#i].1)?)
    });

    // dfdx `TensorCollection` and `MeanFieldGuide` for the guide.
    let layer_fields: Vec<&Field> = layers.iter().map(|(f, _)| *f).collect();
    let guide_collection = collection(&guide, &layer_fields);
    let guide_views = layers.iter().map(|(f, _)| {
        let fname = f.ident;
        quote_spanned!(f.ty.span()=> __v.push(#p::NormalParams::view(&self.#fname)))
    });

    let weights_impl = weights_impl(cont, &layers);

    quote! {
        #model_struct
        #guide_struct
        #weights_struct

        #[doc(hidden)]
        const _: () = {
            #arch

            impl<E: #p::Real, D: #p::Device<E>> #ident<E, D> {
                #[doc = #new_doc]
                #[allow(dead_code)]
                pub fn new(dev: &D) -> Self {
                    Self { #(#inits,)* }
                }
            }

            #model_collection

            #[automatically_derived]
            impl<E: #p::Real, D: #p::Device<E>> #p::Bnn<E, D> for #ident<E, D> {
                type Guide = #guide<E, D>;

                const ARCH: &'static #p::Architecture = __ARCH;

                fn device(&self) -> &D {
                    self.#lik_ident.raw.device()
                }

                fn prior_params(&self) -> #p::Vec<#p::PriorView<E, D>> {
                    let mut __v = #p::Vec::with_capacity(#n_layers_lit);
                    #(#prior_views;)*
                    __v
                }

                fn likelihood_params(&self) -> &#p::LikelihoodParams<E, D> {
                    &self.#lik_ident
                }

                fn guide_from_values(
                    &self,
                    __values: &[(#p::Vec<::core::primitive::f64>, #p::Vec<::core::primitive::f64>)],
                ) -> #p::Result<Self::Guide, #p::Error> {
                    if __values.len() != #n_layers_lit {
                        return #p::Result::Err(#p::Error::Shape {
                            what: ::std::string::String::from(#guide_values_what),
                            expected: ::std::string::String::from(#layers_expected),
                            got: ::std::format!("{} layers", __values.len()),
                        });
                    }
                    let __dev = #p::Bnn::<E, D>::device(self);
                    #p::Result::Ok(#guide { #(#from_values,)* })
                }
            }

            #guide_collection

            #[automatically_derived]
            impl<E: #p::Real, D: #p::Device<E>> #p::MeanFieldGuide<E, D> for #guide<E, D> {
                fn layer_params(&self) -> #p::Vec<#p::NormalView<E, D>> {
                    let mut __v = #p::Vec::with_capacity(#n_layers_lit);
                    #(#guide_views;)*
                    __v
                }
            }

            #weights_impl
        };
    }
}

/// `<E: Dtype = f32, D: Storage<E> = Cpu>`.
fn struct_generics(with_tape: bool) -> TokenStream {
    let p = rt();
    let tape = with_tape.then(|| quote!(, T = #p::NoneTape));
    quote!(<E: #p::Dtype = ::core::primitive::f32, D: #p::Storage<E> = #p::Cpu #tape>)
}

/// The user's struct with its fields' DSL types replaced by parameter containers. `extra` is an
/// additional (fallback) field.
/// `extra_attrs` go on the struct after ours (the fallback silences dead-code lints with them).
pub fn model_struct(cont: &Container, extra: Option<TokenStream>, extra_attrs: TokenStream) -> TokenStream {
    let ident = cont.ident;
    let vis = cont.vis;
    let attrs = &cont.attrs;
    let generics = struct_generics(false);
    let summary = summary_doc(cont);
    let fields = distinct_fields(cont).into_iter().filter_map(|f| {
        let ty = match &f.role {
            Role::Layer(l) => dense_prior_type(f, l),
            Role::Likelihood(_) => {
                let p = rt();
                quote_spanned!(f.ty.span()=> #p::LikelihoodParams<E, D>)
            }
            _ => return None,
        };
        let (fattrs, fvis, fname) = (&f.attrs, f.vis, f.ident);
        Some(quote!(#(#fattrs)* #fvis #fname: #ty))
    });
    quote! {
        #(#attrs)*
        #summary
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #extra_attrs
        #vis struct #ident #generics {
            #(#fields,)*
            #extra
        }
    }
}

/// `{Model}Guide`: one `NormalParams` per layer.
pub fn guide_struct(cont: &Container, extra: Option<TokenStream>) -> TokenStream {
    let p = rt();
    let (vis, ident) = (cont.vis, cont.ident);
    let guide = guide_ident(cont);
    let generics = struct_generics(false);
    let doc = format!("Mean-field Gaussian guide for [`{ident}`]: a `(loc, log_scale)` pair per weight.");
    let fields = distinct_fields(cont).into_iter().filter_map(|f| {
        let Role::Layer(l) = &f.role else { return None };
        let n = Literal::usize_unsuffixed(l.d_out.value.saturating_mul(l.d_in.value.saturating_add(1)));
        let fname = f.ident;
        let doc = format!(
            "Variational parameters of layer `{}`: its `{} × ({} + 1)` weights `[W | b]`, row by row.",
            f.name, l.d_out.value, l.d_in.value
        );
        Some(quote! {
            #[doc = #doc]
            pub #fname: #p::NormalParams<#n, E, D>
        })
    });
    quote! {
        #[doc = #doc]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #[allow(dead_code)]
        #vis struct #guide #generics {
            #(#fields,)*
            #extra
        }
    }
}

/// `{Model}Weights`: `S` samples of every layer's `[W | b]`, with typed widths.
pub fn weights_struct(cont: &Container, extra: Option<TokenStream>) -> TokenStream {
    let (vis, ident) = (cont.vis, cont.ident);
    let weights = weights_ident(cont);
    let generics = struct_generics(true);
    let doc = format!(
        "`S` weight samples of [`{ident}`], one `(S, d_out, d_in + 1)` tensor per layer with the widths in \
         its type. Convert with `into_weights` and `from_weights`."
    );
    let fields = distinct_fields(cont).into_iter().filter_map(|f| {
        let Role::Layer(l) = &f.role else { return None };
        let fname = f.ident;
        let ty = typed_weights_type(l);
        let doc = format!(
            "Samples of layer `{}`: shape `(S, {}, {} + 1)`, row `d` holding unit `d`'s incoming weights then its bias.",
            f.name, l.d_out.value, l.d_in.value
        );
        Some(quote! {
            #[doc = #doc]
            pub #fname: #ty
        })
    });
    quote! {
        #[doc = #doc]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #[allow(dead_code)]
        #vis struct #weights #generics {
            #(#fields,)*
            #extra
        }
    }
}

/// The first field of each name (a duplicate name is reported by `check`).
fn distinct_fields<'c, 'a>(cont: &'c Container<'a>) -> Vec<&'c Field<'a>> {
    let mut seen = std::collections::HashSet::new();
    cont.fields.iter().filter(|f| seen.insert(f.name.as_str())).collect()
}

/// A doc section listing the architecture, appended to the user's own docs.
fn summary_doc(cont: &Container) -> TokenStream {
    let mut lines = vec![String::new(), "# Architecture (generated by `#[bnn]`)".to_string(), String::new()];
    for (f, l) in cont.layers() {
        lines.push(format!(
            "- layer `{}`: {} → {}, {}, prior {}",
            f.name,
            l.d_in.value,
            l.d_out.value,
            l.activation.to_lowercase(),
            prior_text(&l.prior, l.bias_prior.as_ref())
        ));
    }
    if let Some((f, lik)) = cont.likelihood() {
        let text = match lik.kind {
            LikelihoodKind::Gaussian { scale } => format!("Gaussian, noise scale {}", param_text(scale)),
            LikelihoodKind::Categorical => "Categorical over the outputs (softmax)".to_string(),
            LikelihoodKind::Bernoulli => "Bernoulli (sigmoid of the output)".to_string(),
        };
        lines.push(format!("- likelihood `{}`: {text}", f.name));
    }
    let ident = cont.ident;
    lines.push(String::new());
    lines.push(format!("Generated with it: [`{ident}Guide`] (mean-field guide) and [`{ident}Weights`] (typed weight samples)."));
    if matches!(cont.likelihood(), Some((_, Likelihood { kind: LikelihoodKind::Gaussian { .. }, .. }))) {
        lines.push(
            "Its BNNP amortised guide (a dataset to a posterior over all weights in one pass) is \
             `model.amortised_guide(cfg)`, from `weightspace::bnnp::Amortised`."
                .to_string(),
        );
    }
    let lines = lines.into_iter().map(|l| if l.is_empty() { l } else { format!(" {l}") });
    quote!(#(#[doc = #lines])*)
}

fn prior_text(prior: &Prior, bias: Option<&Prior>) -> String {
    let one = |p: &Prior| {
        let mut s = format!("Normal({}, {}) per {}", param_text(p.loc), param_text(p.scale), p.per.variant().to_lowercase());
        if p.fan_in_scaled {
            s.push_str(", fan-in scaled");
        }
        s
    };
    match bias {
        None => one(prior),
        Some(b) => format!("{}; bias prior {}", one(prior), one(b)),
    }
}

fn param_text(p: Param) -> String {
    match p {
        Param::Fixed(v) => format!("{v}"),
        Param::Learned(v) => format!("learned from {v}"),
    }
}

/// `DensePrior<{ prior_weight_len(..) }, { prior_bias_len(..) }, E, D>`, spanned on the field's type.
fn dense_prior_type(f: &Field, l: &Layer) -> TokenStream {
    let p = rt();
    let d_in = Literal::usize_unsuffixed(l.d_in.value);
    let d_out = Literal::usize_unsuffixed(l.d_out.value);
    let per = granularity(l.prior.per);
    let separate = match &l.bias_prior {
        Some(b) => {
            let g = granularity(b.per);
            quote!(#p::Option::Some(#g))
        }
        None => quote!(#p::Option::None),
    };
    quote_spanned! {f.ty.span()=>
        #p::DensePrior<
            { #p::prior_weight_len(#d_in, #d_out, #per) },
            { #p::prior_bias_len(#d_out, #per, #separate) },
            E,
            D,
        >
    }
}

/// `Tensor<(usize, Const<O>, Const<I + 1>), E, D, T>`.
fn typed_weights_type(l: &Layer) -> TokenStream {
    let shape = typed_shape(l);
    let p = rt();
    quote!(#p::Tensor<#shape, E, D, T>)
}

fn typed_shape(l: &Layer) -> TokenStream {
    let p = rt();
    let o = Literal::usize_unsuffixed(l.d_out.value);
    let i1 = Literal::usize_unsuffixed(l.d_in.value.saturating_add(1));
    quote!((::core::primitive::usize, #p::Const<#o>, #p::Const<#i1>))
}

fn granularity(g: crate::attr::Granularity) -> TokenStream {
    let p = rt();
    let v = Ident::new(g.variant(), Span::call_site());
    quote!(#p::Granularity::#v)
}

/// A finite `f64` as a suffixed literal, negated when needed.
fn float(v: f64) -> TokenStream {
    if !v.is_finite() {
        // Values are checked finite when parsed; never reached.
        return quote!(0f64);
    }
    let lit = Literal::f64_suffixed(v.abs());
    if v.is_sign_negative() {
        quote!(-#lit)
    } else {
        lit.into_token_stream()
    }
}

fn param(v: Param) -> TokenStream {
    let p = rt();
    match v {
        Param::Fixed(x) => {
            let x = float(x);
            quote!(#p::Param::Fixed(#x))
        }
        Param::Learned(x) => {
            let x = float(x);
            quote!(#p::Param::Learned(#x))
        }
    }
}

fn normal_spec(prior: &Prior) -> TokenStream {
    let p = rt();
    let (loc, scale, per) = (param(prior.loc), param(prior.scale), granularity(prior.per));
    let fan_in_scaled = prior.fan_in_scaled;
    quote!(#p::NormalSpec { loc: #loc, scale: #scale, per: #per, fan_in_scaled: #fan_in_scaled })
}

fn layer_spec(f: &Field, l: &Layer) -> TokenStream {
    let p = rt();
    let name = &f.name;
    let d_in = Literal::usize_unsuffixed(l.d_in.value);
    let d_out = Literal::usize_unsuffixed(l.d_out.value);
    let act = Ident::new(l.activation, Span::call_site());
    let prior = normal_spec(&l.prior);
    let bias = match &l.bias_prior {
        Some(b) => {
            let b = normal_spec(b);
            quote!(#p::Option::Some(#b))
        }
        None => quote!(#p::Option::None),
    };
    quote! {
        #p::LayerSpec {
            name: #name,
            d_in: #d_in,
            d_out: #d_out,
            activation: #p::Activation::#act,
            prior: #prior,
            bias_prior: #bias,
        }
    }
}

fn likelihood_spec(lik: &Likelihood) -> TokenStream {
    let p = rt();
    match lik.kind {
        LikelihoodKind::Gaussian { scale } => {
            let scale = param(scale);
            let upper = match &lik.upper {
                Some((_, n)) => {
                    let v = float(n.value);
                    quote!(#p::Option::Some(#v))
                }
                None => quote!(#p::Option::None),
            };
            quote!(#p::LikelihoodSpec::Gaussian { scale: #scale, upper: #upper })
        }
        LikelihoodKind::Categorical => quote!(#p::LikelihoodSpec::Categorical),
        LikelihoodKind::Bernoulli => quote!(#p::LikelihoodSpec::Bernoulli),
    }
}

/// A nested tuple of at most six elements per level: dfdx implements `ModuleFields` for tuples up
/// to arity 6.
fn nest(items: &[TokenStream]) -> TokenStream {
    const MAX: usize = 6;
    if items.len() <= MAX {
        return quote!((#(#items,)*));
    }
    let chunk = items.len().div_ceil(MAX);
    let groups: Vec<TokenStream> = items.chunks(chunk).map(nest).collect();
    nest(&groups)
}

/// `impl TensorCollection for #ty`: each field a sub-module named after it.
fn collection(ty: &Ident, fields: &[&Field]) -> TokenStream {
    let p = rt();
    let accessors: Vec<TokenStream> = fields
        .iter()
        .map(|f| {
            let (fname, name) = (f.ident, &f.name);
            quote_spanned! {f.ty.span()=>
                <Self as #p::TensorCollection<E, D>>::module(#name, |__s| &__s.#fname, |__s| &mut __s.#fname)
            }
        })
        .collect();
    let bindings: Vec<Ident> = (0..fields.len()).map(|i| Ident::new(&format!("__f{i}"), Span::mixed_site())).collect();
    let pattern = nest(&bindings.iter().map(ToTokens::to_token_stream).collect::<Vec<_>>());
    let accessors = nest(&accessors);
    let names = fields.iter().map(|f| f.ident);
    quote! {
        #[automatically_derived]
        impl<E: #p::Dtype, D: #p::Device<E>> #p::TensorCollection<E, D> for #ty<E, D> {
            type To<__E2: #p::Dtype, __D2: #p::Device<__E2>> = #ty<__E2, __D2>;

            fn iter_tensors<__V: #p::ModuleVisitor<Self, E, D>>(
                __visitor: &mut __V,
            ) -> #p::Result<#p::Option<Self::To<__V::E2, __V::D2>>, __V::Err> {
                #p::ModuleVisitor::visit_fields(
                    __visitor,
                    #accessors,
                    |#pattern| #ty { #(#names: #bindings,)* },
                )
            }
        }
    }
}

/// `into_weights` / `from_weights` on `{Model}Weights`.
///
/// The bounds name the reshapes through `ReshapeTo` and `HasShape` (`__private` does not export
/// dfdx's `Tape`), so they hold for `NoneTape` and `OwnedTape` alike.
fn weights_impl(cont: &Container, layers: &[(&Field, &Layer)]) -> TokenStream {
    let p = rt();
    let weights = weights_ident(cont);
    let name = cont.ident.to_string();
    let usize_ = quote!(::core::primitive::usize);
    let dyn_shape = quote!((#usize_, #usize_, #usize_));
    let dyn_tensor = quote!(#p::Tensor<#dyn_shape, E, D, T>);

    // One bound per distinct typed shape, and one for the runtime-shaped tensor.
    let mut shapes: Vec<(usize, usize)> = Vec::new();
    for (_, l) in layers {
        let key = (l.d_out.value, l.d_in.value.saturating_add(1));
        if !shapes.contains(&key) {
            shapes.push(key);
        }
    }
    let typed: Vec<TokenStream> = shapes
        .iter()
        .map(|(o, i1)| {
            let (o, i1) = (Literal::usize_unsuffixed(*o), Literal::usize_unsuffixed(*i1));
            quote!((#usize_, #p::Const<#o>, #p::Const<#i1>))
        })
        .collect();
    let typed_bounds = typed.iter().map(|s| {
        quote! {
            #p::Tensor<#s, E, D, T>: #p::ReshapeTo
                + #p::HasShape<Shape = #s, WithShape<#dyn_shape> = #dyn_tensor>
        }
    });
    let to_typed = typed.iter().map(|s| quote!(WithShape<#s> = #p::Tensor<#s, E, D, T>));
    let where_clause = quote! {
        where
            #(#typed_bounds,)*
            #dyn_tensor: #p::ReshapeTo + #p::HasShape<Shape = #dyn_shape, #(#to_typed),*>,
    };

    let n = layers.len();
    let n_lit = Literal::usize_unsuffixed(n);
    let into = layers.iter().map(|(f, l)| {
        let fname = f.ident;
        let o = Literal::usize_unsuffixed(l.d_out.value);
        let i1 = Literal::usize_unsuffixed(l.d_in.value.saturating_add(1));
        quote! {
            let __s = #p::HasShape::shape(&self.#fname).0;
            __layers.push(#p::ReshapeTo::reshape_like(self.#fname, &(__s, #o as #usize_, #i1 as #usize_)));
        }
    });
    let locals: Vec<Ident> = (0..n).map(|i| Ident::new(&format!("__l{i}"), Span::mixed_site())).collect();
    let checks = layers.iter().zip(&locals).map(|((f, l), local)| {
        let lname = &f.name;
        let o = Literal::usize_unsuffixed(l.d_out.value);
        let i1 = Literal::usize_unsuffixed(l.d_in.value.saturating_add(1));
        quote! {
            let (__ls, __lo, __li) = *#p::HasShape::shape(&#local);
            if (__ls, __lo, __li) != (__s, #o, #i1) {
                return #p::Result::Err(#p::Error::Shape {
                    what: ::std::format!("weights of layer `{}` of `{}`", #lname, #name),
                    expected: ::std::format!("({}, {}, {})", __s, #o, #i1),
                    got: ::std::format!("({}, {}, {})", __ls, __lo, __li),
                });
            }
        }
    });
    let builds = layers.iter().zip(&locals).map(|((f, l), local)| {
        let fname = f.ident;
        let o = Literal::usize_unsuffixed(l.d_out.value);
        let i1 = Literal::usize_unsuffixed(l.d_in.value.saturating_add(1));
        quote!(#fname: #p::ReshapeTo::reshape_like(#local, &(__s, #p::Const::<#o>, #p::Const::<#i1>)))
    });
    let Some(first) = locals.first() else {
        // `check` guarantees at least one layer; emit nothing rather than index out of bounds.
        return TokenStream::new();
    };
    let layers_expected = format!("{n} layer{}", if n == 1 { "" } else { "s" });
    let what = format!("weights of `{name}`");

    quote! {
        #[allow(dead_code)]
        impl<E: #p::Dtype, D: #p::Device<E>, T> #weights<E, D, T>
        #where_clause
        {
            /// The runtime-shaped form core algorithms take: one `(S, d_out, d_in + 1)` tensor per
            /// layer, in layer order.
            pub fn into_weights(self) -> #p::Weights<E, D, T> {
                let mut __layers = #p::Vec::with_capacity(#n_lit);
                #(#into)*
                #p::Weights { layers: __layers }
            }

            /// Checks the number of layers and each layer's `(d_out, d_in + 1)` against the
            /// declaration, then gives the widths their types.
            ///
            /// # Errors
            ///
            /// `Error::Shape`, naming the layer, when a shape differs from the declaration (or the
            /// layers disagree on the number of samples).
            pub fn from_weights(w: #p::Weights<E, D, T>) -> #p::Result<Self, #p::Error> {
                let [#(#locals),*]: [#dyn_tensor; #n_lit] = match ::core::convert::TryFrom::try_from(w.layers) {
                    #p::Result::Ok(__a) => __a,
                    #p::Result::Err(__v) => {
                        let __v: #p::Vec<#dyn_tensor> = __v;
                        return #p::Result::Err(#p::Error::Shape {
                            what: ::std::string::String::from(#what),
                            expected: ::std::string::String::from(#layers_expected),
                            got: ::std::format!("{} layers", __v.len()),
                        });
                    }
                };
                let __s = #p::HasShape::shape(&#first).0;
                #(#checks)*
                #p::Result::Ok(Self { #(#builds,)* })
            }
        }
    }
}
