//! Unit tests of the expansion on token streams: which messages a declaration produces, and that
//! odd inputs give errors rather than panics. The end-to-end behaviour (spans, the generated code
//! compiling) is tested by the `weightspace` crate's `tests/trybuild.rs` and `tests/macro_expand.rs`.

use proc_macro2::TokenStream;
use quote::quote;

use crate::bnn_impl;

/// The messages of every `compile_error!` in the expansion.
fn errors(args: TokenStream, input: TokenStream) -> Vec<String> {
    let out = bnn_impl(args, input).to_string();
    out.split("compile_error !")
        .skip(1)
        .filter_map(|rest| {
            let start = rest.find('"')? + 1;
            let end = start + rest[start..].find("\" }")?;
            Some(rest[start..end].replace("\\\"", "\""))
        })
        .collect()
}

fn errors_of(input: TokenStream) -> Vec<String> {
    errors(TokenStream::new(), input)
}

fn net(layer_attr: TokenStream, ty: TokenStream, lik_attr: TokenStream, lik: TokenStream) -> TokenStream {
    quote! {
        struct Net {
            #[layer(#layer_attr)]
            out: #ty,
            #[likelihood #lik_attr]
            noise: #lik,
        }
    }
}

fn layer_errors(layer_attr: TokenStream) -> Vec<String> {
    errors_of(net(layer_attr, quote!(Dense<1, 1>), quote!(), quote!(Gaussian<Fixed<0.1>>)))
}

#[test]
fn a_valid_declaration_has_no_errors() {
    let out = bnn_impl(TokenStream::new(), net(quote!(prior = Normal(0.0, 1.0)), quote!(Dense<1, 3>), quote!(), quote!(Categorical)));
    let text = out.to_string();
    assert!(!text.contains("compile_error"), "{:?}", errors_of(net(quote!(), quote!(Dense<1, 3>), quote!(), quote!(Categorical))));
    assert!(text.contains("struct NetGuide") && text.contains("struct NetWeights"));
}

#[test]
fn option_values_are_checked() {
    let cases: Vec<(TokenStream, &str)> = vec![
        (quote!(prior = Normal(0.0)), "`Normal` takes 2 arguments"),
        (quote!(prior = Normal), "`Normal` needs its parameters"),
        (quote!(prior = 1.0), "expected a prior such as"),
        (quote!(prior = Normal(0.0, Sampled(1.0))), "expected a number, `Learned(<initial value>)` or `Fixed(<value>)`"),
        (quote!(prior = Normal(0.0, Learned(1.0, 2.0))), "take one number"),
        (quote!(prior = Normal(0.0, "1")), "expected a number"),
        (quote!(prior = Normal(0.0, 1e999)), "expected a finite number"),
        (quote!(prior = Normal(0.0, -2)), "the prior scale must be > 0, got -2"),
        (quote!(per = "unit"), "write `per = unit` without quotes"),
        (quote!(per = unti), "did you mean `unit`?"),
        (quote!(bias_prior = Normal(0.0, 1.0), bias_per = weight), "`bias_per = weight` is not supported"),
        (quote!(fan_in_scaled = true), "`fan_in_scaled` is a flag"),
        (quote!(fan_in_scaled, fan_in_scaled), "duplicate option `fan_in_scaled`"),
        (quote!(prior(Normal(0.0, 1.0))), "expected `=`"),
        (quote!(a::b = 1), "unknown `#[layer]` option `a::b`"),
    ];
    for (attr, expected) in cases {
        let errs = layer_errors(attr.clone());
        assert!(errs.iter().any(|e| e.contains(expected)), "#[layer({attr})]: expected {expected:?}, got {errs:?}");
    }
}

#[test]
fn every_bad_option_of_one_attribute_is_reported() {
    let errs = layer_errors(quote!(prior = Laplace(0.0, 1.0), per = unit, per = unit, scale = 2.0, bias_per = unit));
    assert_eq!(errs.len(), 4, "{errs:?}");
}

#[test]
fn likelihood_types_and_options() {
    let lik = |attr: TokenStream, ty: TokenStream| errors_of(net(quote!(), quote!(Dense<1, 1>), attr, ty));
    assert!(lik(quote!(), quote!(Gaussian)).iter().any(|e| e.contains("needs its noise scale")));
    assert!(lik(quote!(), quote!(Gaussian<0.1>)).iter().any(|e| e.contains("needs its noise scale")));
    assert!(lik(quote!(), quote!(Gaussian<Fixed>)).iter().any(|e| e.contains("needs its noise scale")));
    assert!(lik(quote!(), quote!(Gaussian<Learned<-1.0>>)).iter().any(|e| e.contains("initial noise scale must be > 0")));
    assert!(lik(quote!(), quote!(Bernoulli<1>)).iter().any(|e| e.contains("takes no parameters")));
    assert!(lik(quote!((upper = 0)), quote!(Gaussian<Learned>)).iter().any(|e| e.contains("`upper` must be > 0")));
    assert!(lik(quote!((upper = 1.0)), quote!(Gaussian<Learned>)).iter().any(|e| e.contains("greater than the initial noise scale 1")));
    assert!(lik(quote!((upper = 2.0)), quote!(Categorical)).iter().any(|e| e.contains("applies only to")));
    assert!(lik(quote!((lower = 2.0)), quote!(Gaussian<Learned>)).iter().any(|e| e.contains("unknown `#[likelihood]` option `lower`")));
    assert!(lik(quote!((upper = 2.0)), quote!(Gaussian<Learned>)).is_empty());
    assert!(lik(quote!(), quote!(Gaussian<Learned<1>>)).is_empty());
    // A single output cannot be a categorical distribution.
    assert!(lik(quote!(), quote!(Categorical)).iter().any(|e| e.contains("at least 2")));
}

#[test]
fn layer_types_are_checked() {
    let ty = |t: TokenStream| errors_of(net(quote!(), t, quote!(), quote!(Categorical)));
    assert!(ty(quote!(Dense<1>)).iter().any(|e| e.contains("found 1 generic arguments")));
    assert!(ty(quote!(Dense<1, 2, Tanh, Tanh>)).iter().any(|e| e.contains("found 4 generic arguments")));
    assert!(ty(quote!(Dense<0, 2>)).iter().any(|e| e.contains("at least 1")));
    assert!(ty(quote!(Dense<1.0, 2>)).iter().any(|e| e.contains("integer literals")));
    assert!(ty(quote!(Dense<{ 1 + 1 }, 2>)).iter().any(|e| e.contains("integer literals")));
    assert!(ty(quote!(Dense<1, 99999999999999999999999>)).iter().any(|e| e.contains("number too large")));
    assert!(ty(quote!(Dense<1, 2, relu>)).iter().any(|e| e.contains("did you mean `Relu`?")));
    assert!(ty(quote!(Dense<1, 2, 3>)).iter().any(|e| e.contains("expected an activation")));
    assert!(ty(quote!(Dense<18446744073709551615, 2>)).iter().any(|e| e.contains("too large")));
    assert!(ty(quote!(&Dense<1, 2>)).iter().any(|e| e.contains("must be `Dense<IN, OUT>`")));
}

#[test]
fn struct_level_mistakes() {
    assert!(errors_of(quote!(
        fn net() {}
    ))
    .iter()
    .any(|e| e.contains("applies to a struct")));
    assert!(errors_of(quote!(union U { a: u8 })).iter().any(|e| e.contains("found a union")));
    let twice = errors_of(quote! {
        struct Net {
            #[layer] a: Dense<1, 2>,
            #[layer] a: Dense<2, 1>,
            #[likelihood] y: Bernoulli,
        }
    });
    assert!(twice.iter().any(|e| e.contains("field `a` is declared twice")), "{twice:?}");
    let misplaced = errors_of(quote! {
        #[layer]
        struct Net { #[layer] a: Dense<1, 1>, #[likelihood] y: Bernoulli }
    });
    assert!(misplaced.iter().any(|e| e.contains("belongs on a field")), "{misplaced:?}");
    let name_value = errors_of(quote!(
        struct Net {
            #[layer = "x"]
            a: Dense<1, 1>,
            #[likelihood]
            y: Bernoulli,
        }
    ));
    assert!(name_value.iter().any(|e| e.contains("expected `#[layer]` or `#[layer(option, ...)]`")), "{name_value:?}");
    let hint = errors_of(quote!(
        struct Net {
            #[layer]
            a: Dense<1, 1>,
            y: Bernoulli,
        }
    ));
    assert!(hint.iter().any(|e| e.contains("this looks like the likelihood")), "{hint:?}");
    let args = errors(quote!(debug), net(quote!(), quote!(Dense<1, 1>), quote!(), quote!(Bernoulli)));
    assert_eq!(args.len(), 1, "{args:?}");
}

#[test]
fn errors_come_with_the_stub_struct() {
    let out =
        bnn_impl(TokenStream::new(), net(quote!(prior = Laplace(0.0, 1.0)), quote!(Dense<1, 1>), quote!(), quote!(Bernoulli))).to_string();
    assert!(out.contains("compile_error"));
    assert!(out.contains("struct Net <"));
    assert!(out.contains("impl < E : :: weightspace :: __private :: Real"));
    assert!(!out.contains("# [layer"), "our attributes are stripped");
}

#[test]
fn many_fields_nest_tuples() {
    let layers = (0..13usize).map(|i| {
        let name = quote::format_ident!("l{}", i);
        quote!(#[layer] #name: Dense<2, 2>,)
    });
    let out = bnn_impl(TokenStream::new(), quote!(struct Net { #(#layers)* #[likelihood] y: Categorical })).to_string();
    assert!(!out.contains("compile_error"));
    // 14 model fields: five groups of at most three (dfdx takes tuples of up to six).
    assert!(out.contains("| ((__f0 , __f1 , __f2 ,) , (__f3 , __f4 , __f5 ,) , (__f6 ,"));
    assert!(out.contains("(__f12 , __f13 ,) ,) |"));
    // 13 guide fields: five groups of at most three.
    assert!(out.contains("(__f9 , __f10 , __f11 ,) , (__f12 ,) ,) |"));
}
