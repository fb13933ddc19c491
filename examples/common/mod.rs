//! Command-line parsing shared by the examples (`mod common;` in each): `--name` switches,
//! `--name value` options and, where an example takes them, positional arguments. Every example
//! accepts `--quick` (a smoke run: every size shrunk so it finishes in seconds; `tests/examples.rs`
//! runs them all that way) and `--help`. Anything else, or a value that does not parse, is reported
//! with the usage line and exit status 2 instead of being ignored.

// each example uses a different subset of these helpers
#![allow(dead_code)]

pub mod sawtooth;

use std::str::FromStr;

/// The parsed command line of one example.
pub struct Args {
    program: String,
    usage: &'static str,
    switches: Vec<String>,
    options: Vec<(String, String)>,
    positional: Vec<String>,
}

impl Args {
    /// Parses the process arguments. `switches` take no value and `options` take one (`--quick`
    /// and `--help` are always accepted); at most `max_positional` other arguments are allowed.
    /// `usage` is printed after the example's name on `--help` and on errors.
    pub fn parse(usage: &'static str, switches: &[&str], options: &[&str], max_positional: usize) -> Args {
        let mut raw = std::env::args();
        let program = raw.next().as_deref().map(|p| p.rsplit(['/', '\\']).next().unwrap_or(p).to_string()).unwrap_or_default();
        let mut args = Args { program, usage, switches: Vec::new(), options: Vec::new(), positional: Vec::new() };
        while let Some(a) = raw.next() {
            if a == "--help" || a == "-h" {
                println!("usage: {} {usage}", args.program);
                std::process::exit(0);
            } else if a == "--quick" || switches.contains(&a.as_str()) {
                args.switches.push(a);
            } else if options.contains(&a.as_str()) {
                match raw.next() {
                    Some(v) => args.options.push((a, v)),
                    None => args.fail(&format!("{a} needs a value")),
                }
            } else if a.starts_with('-') && a.parse::<f64>().is_err() {
                args.fail(&format!("unknown argument `{a}`"));
            } else if args.positional.len() < max_positional {
                args.positional.push(a);
            } else {
                args.fail(&format!("unexpected argument `{a}`"));
            }
        }
        args
    }

    /// Prints `message` and the usage line to stderr and exits with status 2.
    pub fn fail(&self, message: &str) -> ! {
        eprintln!("{}: {message}\nusage: {} {}", self.program, self.program, self.usage);
        std::process::exit(2)
    }

    /// Whether `--quick` was given.
    pub fn quick(&self) -> bool {
        self.flag("--quick")
    }

    /// Whether the switch `name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    /// The value of option `name` (the last one if repeated), or `default`.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T {
        match self.options.iter().rev().find(|(k, _)| k == name) {
            None => default,
            Some((_, v)) => v.parse().unwrap_or_else(|_| self.fail(&format!("{name}: cannot parse `{v}`"))),
        }
    }

    /// The raw value of option `name`, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.options.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Positional argument `i` parsed as `T`, or `default` when absent.
    pub fn positional<T: FromStr>(&self, i: usize, default: T) -> T {
        match self.positional.get(i) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| self.fail(&format!("argument {}: cannot parse `{v}`", i + 1))),
        }
    }
}
