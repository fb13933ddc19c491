//! Per-rank draw shards: each rank of a sharded run writes its chains to one safetensors file, and
//! a later merge step (one process) reads the complete set back in chain order. For runs whose
//! draws are too large to gather on rank 0 over MPI.
//!
//! A shard holds `draws` (`(chains, draws, dim)`), named per-chain columns (`(chains, width)`),
//! run-level tensors that every rank holds alike, and string metadata: which chains it holds
//! (`first_chain`, `total_chains`), which rank of how many wrote it, and the writer's own keys.
//! Files are named `<stem>.rank-<r>-of-<R>.safetensors`, so shards of runs on different rank counts
//! never mix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::model::checkpoint::{write_safetensors, SafetensorsFile};
use crate::{Error, Result};

const FIRST: &str = "weightspace.shard.first_chain";
const TOTAL: &str = "weightspace.shard.total_chains";
const RANK: &str = "weightspace.shard.rank";
const RANKS: &str = "weightspace.shard.ranks";
const COLUMNS: &str = "weightspace.shard.per_chain";
const RUN: &str = "weightspace.shard.run";
const NOT_SHARD: &str = "not a draw shard (written by `write_shard` or `sym_mcmc_shard`)";

/// One rank's chains of a sharded run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChainShard {
    /// Global index of the first chain held.
    pub first_chain: usize,
    /// Chains of the whole run.
    pub total_chains: usize,
    /// The writing rank and the number of ranks.
    pub rank: usize,
    pub ranks: usize,
    /// `draws[c][t]`: draw `t` of local chain `c`.
    pub draws: Vec<Vec<Vec<f64>>>,
    /// Named per-chain columns: `(name, width, values)` with `values.len() == chains · width`.
    pub per_chain: Vec<(String, usize, Vec<f64>)>,
    /// Run-level tensors, the same on every rank: `(name, shape, values)`.
    pub run: Vec<(String, Vec<usize>, Vec<f64>)>,
    /// The writer's own metadata.
    pub meta: HashMap<String, String>,
}

/// The path of rank `rank`'s shard in `dir`.
pub(crate) fn shard_path(dir: &Path, stem: &str, rank: usize, ranks: usize) -> PathBuf {
    dir.join(format!("{stem}.rank-{rank:05}-of-{ranks:05}.safetensors"))
}

impl ChainShard {
    fn dims(&self) -> (usize, usize) {
        let n = self.draws.first().map_or(0, Vec::len);
        let d = self.draws.first().and_then(|c| c.first()).map_or(0, Vec::len);
        (n, d)
    }

    /// Writes the shard to `<dir>/<stem>.rank-<r>-of-<R>.safetensors` (atomically), creating
    /// `dir` if needed; returns the path.
    pub(crate) fn write(&self, dir: &Path, stem: &str) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Checkpoint { path: dir.display().to_string(), reason: e.to_string() })?;
        let path = shard_path(dir, stem, self.rank, self.ranks);
        let c = self.draws.len();
        let (n, d) = self.dims();
        let mut tensors = vec![("draws".to_string(), vec![c, n, d], self.draws.iter().flatten().flatten().copied().collect())];
        for (name, width, v) in &self.per_chain {
            tensors.push((format!("chain.{name}"), vec![c, *width], v.clone()));
        }
        for (name, shape, v) in &self.run {
            tensors.push((format!("run.{name}"), shape.clone(), v.clone()));
        }
        let mut meta = self.meta.clone();
        meta.insert(FIRST.into(), self.first_chain.to_string());
        meta.insert(TOTAL.into(), self.total_chains.to_string());
        meta.insert(RANK.into(), self.rank.to_string());
        meta.insert(RANKS.into(), self.ranks.to_string());
        let cols: Vec<String> = self.per_chain.iter().map(|(n, w, _)| format!("{n}:{w}")).collect();
        meta.insert(COLUMNS.into(), cols.join(","));
        let run: Vec<String> =
            self.run.iter().map(|(n, s, _)| format!("{n}:{}", s.iter().map(usize::to_string).collect::<Vec<_>>().join("x"))).collect();
        meta.insert(RUN.into(), run.join(","));
        write_safetensors::<f64>(&path, tensors, meta)?;
        Ok(path)
    }

    /// Reads a shard written by [`write`](Self::write).
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::read(path)?;
        let bad = |reason: String| Error::Checkpoint { path: path.display().to_string(), reason };
        let first_chain: usize = file.meta(FIRST, NOT_SHARD)?;
        let total_chains: usize = file.meta(TOTAL, NOT_SHARD)?;
        let rank: usize = file.meta(RANK, NOT_SHARD)?;
        let ranks: usize = file.meta(RANKS, NOT_SHARD)?;
        let shape = file.shape("draws")?;
        let [c, n, d] = shape[..] else { return Err(bad(format!("`draws` has shape {shape:?}, expected (chains, draws, dim)"))) };
        let flat = file.tensor::<f64>("draws", &[c, n, d])?;
        let draws = flat.chunks((n * d).max(1)).take(c).map(|ch| ch.chunks(d.max(1)).take(n).map(<[f64]>::to_vec).collect()).collect();
        let parse = |key: &str| -> Result<Vec<(String, Vec<usize>)>> {
            let spec: String = file.meta(key, NOT_SHARD)?;
            spec.split(',')
                .filter(|s| !s.is_empty())
                .map(|item| {
                    let (name, dims) = item.split_once(':').ok_or_else(|| bad(format!("`{key}` entry {item:?} has no shape")))?;
                    let dims = dims.split('x').map(str::parse).collect::<std::result::Result<Vec<usize>, _>>();
                    Ok((name.to_string(), dims.map_err(|_| bad(format!("`{key}` entry {item:?} has a bad shape")))?))
                })
                .collect()
        };
        let mut per_chain = Vec::new();
        for (name, w) in parse(COLUMNS)? {
            let [w] = w[..] else { return Err(bad(format!("per-chain column `{name}` has no single width"))) };
            per_chain.push((name.clone(), w, file.tensor_any::<f64>(&format!("chain.{name}"), &[c, w])?));
        }
        let mut run = Vec::new();
        for (name, s) in parse(RUN)? {
            let v = file.tensor_any::<f64>(&format!("run.{name}"), &s)?;
            run.push((name, s, v));
        }
        let meta = file.metadata().clone();
        if first_chain + c > total_chains || rank >= ranks {
            return Err(bad(format!("holds chains {first_chain}..{} of {total_chains} as rank {rank} of {ranks}", first_chain + c)));
        }
        Ok(Self { first_chain, total_chains, rank, ranks, draws, per_chain, run, meta })
    }

    /// Reads every shard `<stem>.rank-*-of-*.safetensors` in `dir` and joins them in chain order:
    /// the set must be complete (ranks `0..R` of one run), the shards' chains contiguous and
    /// covering `0..total_chains`, and their run-level tensors and the metadata keys in `same`
    /// equal.
    pub(crate) fn merge_dir(dir: &Path, stem: &str, same: &[&str]) -> Result<Self> {
        let bad = |reason: String| Error::Checkpoint { path: dir.display().to_string(), reason };
        let entries = std::fs::read_dir(dir).map_err(|e| bad(e.to_string()))?;
        let prefix = format!("{stem}.rank-");
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".safetensors")))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(bad(format!("no shards `{stem}.rank-*.safetensors` here")));
        }
        let shards = paths.iter().map(|p| Self::read(p)).collect::<Result<Vec<_>>>()?;
        let ranks = shards[0].ranks;
        if shards.len() != ranks || shards.iter().enumerate().any(|(r, s)| s.rank != r || s.ranks != ranks) {
            let found: Vec<String> = shards.iter().map(|s| format!("{} of {}", s.rank, s.ranks)).collect();
            return Err(bad(format!("the shards are not ranks 0..{ranks} of one run (found ranks {})", found.join(", "))));
        }
        // a rank may hold no chains (fewer chains than ranks): its columns are empty and their
        // widths unknown, so the layout comes from the first shard that holds chains
        let mut merged = shards.iter().find(|s| !s.draws.is_empty()).unwrap_or(&shards[0]).clone();
        merged.draws.clear();
        merged.per_chain.iter_mut().for_each(|(_, _, v)| v.clear());
        let dims = shards.iter().find(|s| !s.draws.is_empty()).map_or((0, 0), Self::dims);
        for s in &shards {
            if s.first_chain != merged.draws.len() || s.total_chains != merged.total_chains {
                return Err(bad(format!(
                    "rank {}'s shard starts at chain {} of {}, expected chain {} of {}",
                    s.rank,
                    s.first_chain,
                    s.total_chains,
                    merged.draws.len(),
                    merged.total_chains
                )));
            }
            if !s.draws.is_empty() && s.dims() != dims {
                return Err(bad(format!("rank {}'s draws have shape {:?} (draws, dim), the others' {dims:?}", s.rank, s.dims())));
            }
            if s.run != shards[0].run || same.iter().any(|k| s.meta.get(*k) != shards[0].meta.get(*k)) {
                return Err(bad(format!("rank {}'s shard belongs to another run (its settings or run-level values differ)", s.rank)));
            }
            let layout = |sh: &Self| -> Vec<(String, usize)> { sh.per_chain.iter().map(|(n, w, _)| (n.clone(), *w)).collect() };
            let names = |sh: &Self| -> Vec<String> { sh.per_chain.iter().map(|(n, _, _)| n.clone()).collect() };
            if names(s) != names(&merged) || (!s.draws.is_empty() && layout(s) != layout(&merged)) {
                return Err(bad(format!("rank {}'s per-chain columns differ from rank 0's", s.rank)));
            }
            merged.draws.extend(s.draws.iter().cloned());
            for ((_, _, v), (_, _, sv)) in merged.per_chain.iter_mut().zip(&s.per_chain) {
                v.extend_from_slice(sv);
            }
        }
        if merged.draws.len() != merged.total_chains {
            return Err(bad(format!("the shards hold {} chains of {}", merged.draws.len(), merged.total_chains)));
        }
        merged.first_chain = 0;
        merged.rank = 0;
        merged.meta = shards[0].meta.clone();
        Ok(merged)
    }

    /// The per-chain column `name` (`chains · width` values).
    pub(crate) fn column(&self, name: &str) -> Result<&[f64]> {
        self.per_chain
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| v.as_slice())
            .ok_or_else(|| Error::Checkpoint { path: "draw shard".into(), reason: format!("no per-chain column `{name}`") })
    }

    /// The run-level tensor `name`.
    pub(crate) fn run_tensor(&self, name: &str) -> Result<&[f64]> {
        self.run
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| v.as_slice())
            .ok_or_else(|| Error::Checkpoint { path: "draw shard".into(), reason: format!("no run-level tensor `{name}`") })
    }

    /// The metadata entry `key`, parsed.
    pub(crate) fn meta<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let v = self.meta.get(key).ok_or_else(|| Error::Checkpoint { path: "draw shard".into(), reason: format!("no `{key}` entry") })?;
        v.parse().map_err(|_| Error::Checkpoint { path: "draw shard".into(), reason: format!("`{key}` = {v:?} does not parse") })
    }
}
