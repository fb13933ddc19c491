//! Attribute keywords and DSL names, as constants, so that every stage spells them the same way.

use std::fmt::{self, Display};

use syn::{Ident, Path};

/// A keyword of the `#[bnn]` language.
#[derive(Copy, Clone, PartialEq, Eq)]
pub struct Symbol(pub &'static str);

// Field attributes.
pub const LAYER: Symbol = Symbol("layer");
pub const LIKELIHOOD: Symbol = Symbol("likelihood");

// `#[layer(...)]` options.
pub const PRIOR: Symbol = Symbol("prior");
pub const PER: Symbol = Symbol("per");
pub const FAN_IN_SCALED: Symbol = Symbol("fan_in_scaled");
pub const BIAS_PRIOR: Symbol = Symbol("bias_prior");
pub const BIAS_PER: Symbol = Symbol("bias_per");
pub const LAYER_OPTIONS: [Symbol; 5] = [PRIOR, PER, FAN_IN_SCALED, BIAS_PRIOR, BIAS_PER];

// `#[likelihood(...)]` options.
pub const UPPER: Symbol = Symbol("upper");
pub const LIKELIHOOD_OPTIONS: [Symbol; 1] = [UPPER];

// Prior families and hyperparameter wrappers.
pub const NORMAL: Symbol = Symbol("Normal");
pub const LEARNED: Symbol = Symbol("Learned");
pub const FIXED: Symbol = Symbol("Fixed");

// Granularities (`per = ...`, `bias_per = ...`).
pub const GRAN_LAYER: Symbol = Symbol("layer");
pub const GRAN_UNIT: Symbol = Symbol("unit");
pub const GRAN_WEIGHT: Symbol = Symbol("weight");

// Field types.
pub const DENSE: Symbol = Symbol("Dense");
pub const GAUSSIAN: Symbol = Symbol("Gaussian");
pub const CATEGORICAL: Symbol = Symbol("Categorical");
pub const BERNOULLI: Symbol = Symbol("Bernoulli");
pub const LIKELIHOODS: [Symbol; 3] = [GAUSSIAN, CATEGORICAL, BERNOULLI];

// Struct attributes the macro must know about.
pub const DERIVE: Symbol = Symbol("derive");

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for &Ident {
    fn eq(&self, word: &Symbol) -> bool {
        *self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl PartialEq<Symbol> for &Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl Display for Symbol {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str(self.0)
    }
}

/// `` `a`, `b` or `c` `` for an error message.
pub fn one_of(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {}", rest.join(", "), last),
    }
}

/// A close spelling among `candidates`, for a "did you mean" hint.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting insertions, deletions, substitutions and adjacent transpositions
/// (optimal string alignment), so that `Tahn` is one edit from `Tanh`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// `message` followed by a "did you mean" hint when one applies.
pub fn with_hint<'a>(message: String, word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match did_you_mean(word, candidates) {
        Some(hint) if hint != word => format!("{message}; did you mean `{hint}`?"),
        _ => message,
    }
}
