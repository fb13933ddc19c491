//! Stubs emitted beside the errors of a declaration that failed to check.
//!
//! The user's struct is still defined (with the fields that could be read, at their generated
//! types), together with its guide and weights types and stub impls of the core traits. Code that
//! uses the model therefore still type-checks, and one mistake in a declaration gives one message.
//! The stub bodies never run: the crate does not compile.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::Container;
use crate::expand::{guide_ident, guide_struct, model_struct, rt, weights_ident, weights_struct};

pub fn fallback(cont: &Container) -> TokenStream {
    let p = rt();
    let ident = cont.ident;
    let guide = guide_ident(cont);
    let weights = weights_ident(cont);
    let phantom = |tape: bool| {
        let t = tape.then(|| quote!(, T));
        Some(quote!(#[doc(hidden)] #[allow(dead_code)] pub __phantom: ::core::marker::PhantomData<(E, D #t)>))
    };
    let model = model_struct(cont, phantom(false), quote!(#[allow(dead_code)]));
    let guide_def = guide_struct(cont, phantom(false));
    let weights_def = weights_struct(cont, phantom(true));
    let unimplemented = quote!(::core::unimplemented!("the `#[bnn]` declaration has errors"));
    let name = ident.to_string();
    let f64_ = quote!(::core::primitive::f64);

    quote! {
        #model
        #guide_def
        #weights_def

        #[doc(hidden)]
        const _: () = {
            impl<E: #p::Real, D: #p::Device<E>> #ident<E, D> {
                #[allow(dead_code)]
                pub fn new(_: &D) -> Self {
                    #unimplemented
                }
            }

            impl<E: #p::Dtype, D: #p::Device<E>> #p::TensorCollection<E, D> for #ident<E, D> {
                type To<__E2: #p::Dtype, __D2: #p::Device<__E2>> = #ident<__E2, __D2>;
                fn iter_tensors<__V: #p::ModuleVisitor<Self, E, D>>(
                    _: &mut __V,
                ) -> #p::Result<#p::Option<Self::To<__V::E2, __V::D2>>, __V::Err> {
                    #unimplemented
                }
            }

            impl<E: #p::Real, D: #p::Device<E>> #p::Bnn<E, D> for #ident<E, D> {
                type Guide = #guide<E, D>;
                const ARCH: &'static #p::Architecture = &#p::Architecture {
                    name: #name,
                    layers: &[],
                    likelihood_name: "",
                    likelihood: #p::LikelihoodSpec::Categorical,
                };
                fn device(&self) -> &D {
                    #unimplemented
                }
                fn prior_params(&self) -> #p::Vec<#p::PriorView<E, D>> {
                    #unimplemented
                }
                fn likelihood_params(&self) -> &#p::LikelihoodParams<E, D> {
                    #unimplemented
                }
                fn guide_from_values(
                    &self,
                    _: &[(#p::Vec<#f64_>, #p::Vec<#f64_>)],
                ) -> #p::Result<Self::Guide, #p::Error> {
                    #unimplemented
                }
            }

            impl<E: #p::Dtype, D: #p::Device<E>> #p::TensorCollection<E, D> for #guide<E, D> {
                type To<__E2: #p::Dtype, __D2: #p::Device<__E2>> = #guide<__E2, __D2>;
                fn iter_tensors<__V: #p::ModuleVisitor<Self, E, D>>(
                    _: &mut __V,
                ) -> #p::Result<#p::Option<Self::To<__V::E2, __V::D2>>, __V::Err> {
                    #unimplemented
                }
            }

            impl<E: #p::Real, D: #p::Device<E>> #p::MeanFieldGuide<E, D> for #guide<E, D> {
                fn layer_params(&self) -> #p::Vec<#p::NormalView<E, D>> {
                    #unimplemented
                }
            }

            #[allow(dead_code)]
            impl<E: #p::Dtype, D: #p::Device<E>, T> #weights<E, D, T> {
                pub fn into_weights(self) -> #p::Weights<E, D, T> {
                    #unimplemented
                }
                pub fn from_weights(_: #p::Weights<E, D, T>) -> #p::Result<Self, #p::Error> {
                    #unimplemented
                }
            }
        };
    }
}
