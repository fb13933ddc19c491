//! The `#[bnn]` attribute macro of [weightspace](https://docs.rs/weightspace).
//!
//! Use it through the `weightspace` crate (`use weightspace::prelude::*;`); the documentation of
//! [`macro@bnn`] lists the whole declaration language. The macro is organised like
//! `serde_derive`, one stage per module:
//!
//! - `symbol`: the keywords of the language;
//! - `ctxt`: the error accumulator (every mistake is reported in one compile);
//! - `attr`: parsing of `#[layer(...)]` and `#[likelihood(...)]`, with duplicate detection;
//! - `ast`: the internal model (layers, priors, likelihood), keeping the user's tokens for spans;
//! - `check`: cross-field rules (one likelihood, matching widths, ...);
//! - `expand`: thin code generation against `::weightspace::__private`;
//! - `fallback`: the stubs emitted beside errors, so one mistake gives one message.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ast;
mod attr;
mod check;
mod ctxt;
mod expand;
mod fallback;
mod symbol;
#[cfg(test)]
mod tests;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, ToTokens};
use syn::{Fields, Item};

use crate::ctxt::Ctxt;

/// Declares a Bayesian neural network: a typed dfdx model, its mean-field guide, its typed weight
/// samples and its architecture, from a struct of layers and one likelihood.
///
/// ```ignore
/// use weightspace::prelude::*;
///
/// /// A 1-D regression net.
/// #[bnn]
/// pub struct SineNet {
///     /// Hidden layer; the prior scale is learned, starting at 1.
///     #[layer(prior = Normal(0.0, Learned(1.0)))]
///     hidden: Dense<1, 50, Tanh>,
///     #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
///     out: Dense<50, 1>,
///     #[likelihood]
///     noise: Gaussian<Learned<0.1>>,
/// }
///
/// let dev = Cpu::default();
/// let model = SineNet::<f32, Cpu>::new(&dev);
/// assert_eq!(SineNet::<f32, Cpu>::ARCH.num_weights(), 50 * 2 + 51);
/// ```
///
/// (The `weightspace` crate runs this example as a doctest; this proc-macro crate cannot.)
///
/// # The struct
///
/// A struct with named fields and no generic parameters. Each field is either a **layer**, marked
/// `#[layer(...)]`, or the **likelihood**, marked `#[likelihood]`; there is exactly one likelihood
/// and at least one layer. Layers run in declaration order. Visibility, doc comments and other
/// attributes of the struct and its fields are kept. `#[bnn]` itself takes no arguments.
///
/// # Layers: `Dense<IN, OUT>` and `Dense<IN, OUT, Activation>`
///
/// `IN` and `OUT` are integer literals, at least 1. Each layer's `IN` must equal the previous
/// layer's `OUT`. The activation is applied to the layer's output and defaults to `Identity`:
///
/// | activation | `f(z)` |
/// |---|---|
/// | `Identity` | `z` |
/// | `Tanh` | `tanh z` |
/// | `Relu` | `max(z, 0)` |
/// | `Sigmoid` | `1 / (1 + e^-z)` |
/// | `Softplus` | `ln(1 + e^z)` |
/// | `Silu` | `z · sigmoid(z)` |
/// | `Gelu` | `z · Φ(z)` (tanh approximation) |
///
/// ```text
/// #[layer(prior = Normal(0.0, 1.0))]
/// hidden: Dense<4, 32, Relu>,
/// ```
///
/// # `#[layer(...)]` options
///
/// Options are separated by commas and each may be given once. A bare `#[layer]` is
/// `#[layer(prior = Normal(0.0, 1.0))]`.
///
/// - **`prior = Normal(loc, scale)`**: the Normal prior over the layer's weights (and its biases,
///   unless `bias_prior` is given). Default `Normal(0.0, 1.0)`. `loc` and `scale` are numbers
///   (integer or float literals, `loc` may be negative), `Learned(initial)` for a hyperparameter
///   trained with the model (e.g. by empirical Bayes or meta-learning), or `Fixed(value)`, the same
///   as a plain number. The scale (fixed or initial) must be > 0. `Normal` is the only family.
///
///   ```text
///   #[layer(prior = Normal(0.0, 1.0))]                   // fixed N(0, 1)
///   #[layer(prior = Normal(0.0, Learned(1.0)))]          // scale learned from 1
///   #[layer(prior = Normal(Learned(-0.5), Learned(2)))]  // both learned
///   ```
///
/// - **`per = layer | unit | weight`**: how many prior `(loc, scale)` pairs the layer has: one for
///   the whole layer (default), one per output unit (shared by its incoming weights and bias), or one
///   per weight.
///
///   ```text
///   #[layer(prior = Normal(0.0, Learned(1.0)), per = unit)]
///   ```
///
/// - **`fan_in_scaled`**: a flag; divides the prior scale by `sqrt(IN + 1)`, so wide layers start
///   with the same output variance as narrow ones.
///
///   ```text
///   #[layer(prior = Normal(0.0, 1.0), fan_in_scaled)]
///   ```
///
/// - **`bias_prior = Normal(loc, scale)`**: a separate prior for the biases, with the same syntax
///   as `prior` (never fan-in scaled). Without it, biases share the weight prior.
///
///   ```text
///   #[layer(prior = Normal(0.0, 1.0), bias_prior = Normal(0.0, Learned(2.0)))]
///   ```
///
/// - **`bias_per = layer | unit`**: the granularity of the separate bias prior (default `layer`);
///   only with `bias_prior`.
///
///   ```text
///   #[layer(prior = Normal(0.0, 1.0), bias_prior = Normal(0.0, 5.0), bias_per = unit)]
///   ```
///
/// # The likelihood: `#[likelihood]` and `#[likelihood(upper = ...)]`
///
/// | field type | observation model |
/// |---|---|
/// | `Gaussian<Fixed<σ>>` | `y ~ N(f(x), σ²)` per output, `σ > 0` fixed |
/// | `Gaussian<Learned<σ0>>` | the same, `σ` learned from `σ0 > 0` |
/// | `Gaussian<Learned>` | the same, learned from 1.0 |
/// | `Categorical` | `y ~ Categorical(softmax f(x))`, one output per class (at least 2) |
/// | `Bernoulli` | `y ~ Bernoulli(sigmoid f(x))`; the last layer has exactly one output |
///
/// - **`upper = <number>`**: bounds a learned Gaussian noise scale, `σ = upper · sigmoid(raw)`;
///   only with `Gaussian<Learned..>`, and it must exceed the initial value.
///
///   ```text
///   #[likelihood(upper = 1.0)]
///   noise: Gaussian<Learned<0.1>>,
///   ```
///
/// # What is generated
///
/// For `#[bnn] pub struct SineNet { .. }`:
///
/// - **`SineNet<E = f32, D = Cpu>`**: the model. Each layer field becomes a
///   `DensePrior<NW, NB, E, D>` holding the prior's `(loc, log_scale)` parameters (`NW`, `NB` from
///   the granularity), the likelihood field a `LikelihoodParams<E, D>`. It derives `Clone` and
///   `Debug` and implements dfdx's `TensorCollection` (so optimisers, device moves and
///   safetensors work on it) and weightspace's `Bnn` (architecture as `SineNet::ARCH`, prior views,
///   likelihood, guide construction). `SineNet::new(&dev)` builds it at the declared values.
/// - **`SineNetGuide<E = f32, D = Cpu>`**: the mean-field Gaussian guide, one
///   `NormalParams<OUT·(IN+1), E, D>` per layer, implementing `TensorCollection` and
///   `MeanFieldGuide`.
/// - **`SineNetWeights<E = f32, D = Cpu, T = NoneTape>`**: `S` weight samples with typed widths, one
///   `Tensor<(usize, Const<OUT>, Const<IN + 1>), E, D, T>` per layer, converted with
///   `into_weights()` and `SineNetWeights::from_weights(w)?` to and from core's runtime-shaped
///   `Weights`.
///
/// # Errors
///
/// Every mistake in a declaration is reported in one compile, at the token that is wrong, e.g.
///
/// ```text
/// error: layer `hidden2` takes 40 inputs but `hidden` produces 50; the widths of consecutive layers must match
///   --> src/main.rs:9:19
///    |
/// 9  |     hidden2: Dense<40, 1>,
///    |                    ^^
/// ```
///
/// The struct, its guide and weights types and stub trait impls are still emitted, so that the rest
/// of the crate type-checks and one mistake gives one message.
#[proc_macro_attribute]
pub fn bnn(args: TokenStream, input: TokenStream) -> TokenStream {
    bnn_impl(args.into(), input.into()).into()
}

fn bnn_impl(args: TokenStream2, input: TokenStream2) -> TokenStream2 {
    let item: Item = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(err) => {
            let mut out = err.to_compile_error();
            out.extend(input);
            return out;
        }
    };
    let cx = Ctxt::new();
    if !args.is_empty() {
        cx.error_spanned_by(&args, "`#[bnn]` takes no arguments; configure layers with `#[layer(...)]` on the fields");
    }
    match item {
        Item::Struct(item) => {
            let cont = ast::Container::from_ast(&cx, &item);
            check::check(&cx, &cont);
            match cx.check() {
                Ok(()) => expand::expand(&cont),
                Err(err) => {
                    // Also for tuple and unit structs: the stubs define the name, without fields.
                    let mut out = fallback::fallback(&cont);
                    out.extend(err.to_compile_error());
                    out
                }
            }
        }
        Item::Enum(mut item) => {
            let (enum_token, ident) = (&item.enum_token, &item.ident);
            cx.error_spanned_by(
                quote!(#enum_token #ident),
                "`#[bnn]` declares a network as a struct with named fields (one per layer, plus the likelihood); found an enum",
            );
            for v in &mut item.variants {
                strip_fields(&mut v.fields);
            }
            with_errors(cx, item.into_token_stream())
        }
        Item::Union(mut item) => {
            let (union_token, ident) = (&item.union_token, &item.ident);
            cx.error_spanned_by(
                quote!(#union_token #ident),
                "`#[bnn]` declares a network as a struct with named fields (one per layer, plus the likelihood); found a union",
            );
            for f in &mut item.fields.named {
                f.attrs.retain(|a| !attr::is_ours(a));
            }
            with_errors(cx, item.into_token_stream())
        }
        other => {
            cx.error_spanned_by(
                quote!(#other).into_iter().take(3).collect::<TokenStream2>(),
                "`#[bnn]` applies to a struct with named fields (one per layer, plus the likelihood)",
            );
            with_errors(cx, other.into_token_stream())
        }
    }
}

/// Removes `#[layer]` and `#[likelihood]` from fields, so the item compiles as plain Rust.
fn strip_fields(fields: &mut Fields) {
    for f in fields.iter_mut() {
        f.attrs.retain(|a| !attr::is_ours(a));
    }
}

/// `item` followed by the recorded errors.
fn with_errors(cx: Ctxt, mut item: TokenStream2) -> TokenStream2 {
    if let Err(err) = cx.check() {
        item.extend(err.to_compile_error());
    }
    item
}
