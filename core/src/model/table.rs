//! Host-side data tables: a user's data read from CSV (through the `csv` crate), from `ndarray`
//! arrays or from a `linfa` dataset, with column names and the class mapping of a categorical
//! target, before it is split, standardised and moved to a device as a [`Dataset`].

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use dfdx::prelude::Device;

use crate::error::DataError;
use crate::model::data::{check_rows, Dataset};
use crate::{Error, Real, Result};

/// A column of a CSV file: by header name, by zero-based index, or the last column.
///
/// ```
/// use weightspace::Column;
/// assert_eq!(Column::from("price"), Column::Name("price".into()));
/// assert_eq!(Column::from(2), Column::Index(2));
/// assert_eq!(Column::Last.to_string(), "the last column");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// The column whose header is this name (the first, if several are).
    Name(String),
    /// The column at this zero-based index.
    Index(usize),
    /// The last column.
    Last,
}

impl From<&str> for Column {
    fn from(name: &str) -> Self {
        Column::Name(name.to_string())
    }
}

impl From<String> for Column {
    fn from(name: String) -> Self {
        Column::Name(name)
    }
}

impl From<usize> for Column {
    fn from(index: usize) -> Self {
        Column::Index(index)
    }
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Column::Name(n) => write!(f, "`{n}`"),
            Column::Index(i) => write!(f, "index {i}"),
            Column::Last => write!(f, "the last column"),
        }
    }
}

/// How the target column is read.
///
/// ```
/// use weightspace::TargetKind;
/// assert_eq!(TargetKind::default(), TargetKind::Real);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetKind {
    /// Numbers (regression); one or more target columns.
    #[default]
    Real,
    /// Class names (any text) mapped to class indices; exactly one target column. The classes
    /// are numbered in sorted order: numerically when every name is a number, otherwise by text.
    Categorical,
}

/// How to read a CSV file into a [`DataTable`]. Plain data: set the fields you need and take the
/// rest from `Default` (a header row, commas, the last column as a real target, every other
/// column a feature).
///
/// ```
/// use weightspace::{Column, CsvOptions, TargetKind};
/// let opts = CsvOptions { targets: vec!["species".into()], target_kind: TargetKind::Categorical, ..Default::default() };
/// assert!(opts.has_header && opts.features.is_none());
/// assert_eq!(CsvOptions::default().targets, vec![Column::Last]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CsvOptions {
    /// Whether the first line holds column names. Without one, columns can only be chosen by
    /// index (or [`Column::Last`]) and are named `column 0`, `column 1`, ...
    pub has_header: bool,
    /// The field delimiter (`b','`, `b';'`, `b'\t'`, ...).
    pub delimiter: u8,
    /// The feature columns, in this order; `None` takes every column that is not a target.
    pub features: Option<Vec<Column>>,
    /// The target columns (one for a categorical target).
    pub targets: Vec<Column>,
    /// Whether the targets are numbers or class names.
    pub target_kind: TargetKind,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self { has_header: true, delimiter: b',', features: None, targets: vec![Column::Last], target_kind: TargetKind::Real }
    }
}

/// The targets of a [`DataTable`].
///
/// ```
/// use weightspace::{DataTable, TableTargets};
/// let t = DataTable::classification(vec![0.0, 1.0], 1, vec![1, 0], 2)?;
/// assert_eq!(t.targets, TableTargets::Labels { labels: vec![1, 0], classes: vec!["0".into(), "1".into()] });
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum TableTargets {
    /// Real targets, row-major `(n, d_out)`.
    Real {
        /// The values.
        y: Vec<f64>,
        /// Targets per row.
        d_out: usize,
    },
    /// Class indices into `classes`, one per row.
    Labels {
        /// The class index of each row.
        labels: Vec<usize>,
        /// The class names: class `k` is `classes[k]` (the mapping from the file's values).
        classes: Vec<String>,
    },
}

/// A data table on the host, in `f64`: row-major features `(n, d_in)`, real targets or class
/// labels, and the column names. Read one with [`from_csv`](Self::from_csv) (or, with the `ndarray`
/// and `linfa` cargo features, from arrays or a linfa dataset), split it with
/// [`UciSplits`](crate::UciSplits), standardise it with [`Standardiser`](crate::Standardiser) and
/// move it to a device with [`dataset`](Self::dataset).
///
/// ```
/// use weightspace::prelude::*;
/// use weightspace::{CsvOptions, DataTable, TableTargets};
/// let csv = "size,rooms,price\n50,2,100\n80,3,160\n65,2,130\n";
/// let opts = CsvOptions { targets: vec!["price".into()], ..Default::default() };
/// let table = DataTable::from_csv_reader(csv.as_bytes(), "houses.csv", &opts)?;
/// assert_eq!((table.len(), table.d_in), (3, 2));
/// assert_eq!(table.feature_names, ["size", "rooms"]);
/// assert_eq!(table.x, [50.0, 2.0, 80.0, 3.0, 65.0, 2.0]);
/// assert_eq!(table.targets, TableTargets::Real { y: vec![100.0, 160.0, 130.0], d_out: 1 });
/// let data: Dataset<f32, Cpu> = table.dataset(&Cpu::default())?;
/// assert_eq!(data.len(), 3);
/// # Ok::<(), weightspace::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DataTable {
    /// Features, row-major `(n, d_in)`.
    pub x: Vec<f64>,
    /// Features per row.
    pub d_in: usize,
    /// The targets.
    pub targets: TableTargets,
    /// The feature columns' names (`x0`, `x1`, ... where the source has none).
    pub feature_names: Vec<String>,
    /// The target columns' names.
    pub target_names: Vec<String>,
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Checks a row-major buffer; returns its rows.
fn rows_mismatch(n: usize, what: &str, got: usize) -> Error {
    Error::Shape { what: what.into(), expected: format!("{n} rows to match the features"), got: format!("{got} rows") }
}

impl DataTable {
    /// A regression table from row-major buffers; the columns are named `x0, x1, ...` and
    /// `y0, y1, ...`.
    ///
    /// ```
    /// use weightspace::DataTable;
    /// let t = DataTable::regression(vec![1.0, 2.0, 3.0, 4.0], 2, vec![0.5, 0.7], 1)?;
    /// assert_eq!((t.len(), t.d_in, t.d_out()), (2, 2, 1));
    /// assert!(DataTable::regression(vec![1.0, 2.0, 3.0], 2, vec![0.5], 1).is_err());
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn regression(x: Vec<f64>, d_in: usize, y: Vec<f64>, d_out: usize) -> Result<Self> {
        let n = check_rows("x (features)", &x, d_in)?;
        let ny = check_rows("y (targets)", &y, d_out)?;
        if ny != n {
            return Err(rows_mismatch(n, "y (targets)", ny));
        }
        Ok(Self { x, d_in, targets: TableTargets::Real { y, d_out }, feature_names: names("x", d_in), target_names: names("y", d_out) })
    }

    /// A classification table: row-major features and labels in `0..classes`; the classes are
    /// named `"0"`, `"1"`, ...
    ///
    /// ```
    /// use weightspace::DataTable;
    /// let t = DataTable::classification(vec![0.1, 0.9, 0.4], 1, vec![0, 2, 1], 3)?;
    /// assert_eq!(t.d_out(), 3);
    /// assert!(DataTable::classification(vec![0.1], 1, vec![3], 3).is_err()); // label out of range
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn classification(x: Vec<f64>, d_in: usize, labels: Vec<usize>, classes: usize) -> Result<Self> {
        let n = check_rows("x (features)", &x, d_in)?;
        if labels.len() != n {
            return Err(rows_mismatch(n, "labels", labels.len()));
        }
        if let Some((row, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
            return Err(Error::LabelOutOfRange { row, label, classes });
        }
        Ok(Self {
            x,
            d_in,
            targets: TableTargets::Labels { labels, classes: (0..classes).map(|k| k.to_string()).collect() },
            feature_names: names("x", d_in),
            target_names: vec!["label".into()],
        })
    }

    /// Reads a CSV file. Every chosen cell must hold a finite number (a categorical target any
    /// non-empty text); an empty cell, text that is not a number, a NaN or an infinity is an
    /// [`Error::Data`] naming the file, the row and the column, as is a row with a different
    /// number of fields or a column that does not exist.
    ///
    /// ```
    /// use weightspace::{CsvOptions, DataTable, Error};
    /// let path = std::env::temp_dir().join("weightspace_doc_from_csv.csv");
    /// std::fs::write(&path, "x,y\n1,2\n3,\n").unwrap();
    /// let err = DataTable::from_csv(&path, &CsvOptions::default()).unwrap_err();
    /// assert!(matches!(err, Error::Data(_)));
    /// let msg = err.to_string();
    /// assert!(msg.contains("weightspace_doc_from_csv.csv:3: row 1, column `y` (index 1): the cell is empty"), "{msg}");
    /// let missing = DataTable::from_csv(path.with_extension("nope"), &CsvOptions::default()).unwrap_err();
    /// assert!(missing.to_string().contains("weightspace_doc_from_csv.nope"));
    /// ```
    pub fn from_csv(path: impl AsRef<Path>, opts: &CsvOptions) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| DataError::Csv {
            path: name.clone(),
            line: None,
            source: Arc::new(csv::Error::from(e)),
        })?;
        Self::from_csv_reader(std::io::BufReader::new(file), &name, opts)
    }

    /// Reads CSV text from any reader; `source` names it in error messages (a path, `"stdin"`).
    ///
    /// ```
    /// use weightspace::{CsvOptions, DataTable, TableTargets, TargetKind};
    /// // no header: columns by index; a categorical target in column 0
    /// let text = "setosa;5.1;3.5\nvirginica;6.3;3.3\nsetosa;4.9;3.0\n";
    /// let opts = CsvOptions {
    ///     has_header: false,
    ///     delimiter: b';',
    ///     targets: vec![0.into()],
    ///     target_kind: TargetKind::Categorical,
    ///     ..Default::default()
    /// };
    /// let t = DataTable::from_csv_reader(text.as_bytes(), "iris", &opts)?;
    /// assert_eq!(t.feature_names, ["column 1", "column 2"]);
    /// let TableTargets::Labels { labels, classes } = &t.targets else { unreachable!() };
    /// assert_eq!((labels.as_slice(), classes.as_slice()), (&[0, 1, 0][..], &["setosa".to_string(), "virginica".into()][..]));
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn from_csv_reader<R: std::io::Read>(reader: R, source: &str, opts: &CsvOptions) -> Result<Self> {
        let csv_err = |e: csv::Error| -> Error {
            let line = e.position().map(|p| p.line());
            DataError::Csv { path: source.to_string(), line, source: Arc::new(e) }.into()
        };
        let mut rdr =
            csv::ReaderBuilder::new().has_headers(opts.has_header).delimiter(opts.delimiter).trim(csv::Trim::All).from_reader(reader);
        let header: Option<Vec<String>> =
            if opts.has_header { Some(rdr.headers().map_err(csv_err)?.iter().map(str::to_string).collect()) } else { None };
        let mut records = Vec::new();
        for rec in rdr.records() {
            records.push(rec.map_err(csv_err)?);
        }
        let width = match (&header, records.first()) {
            (Some(h), _) => h.len(),
            (None, Some(r)) => r.len(),
            (None, None) => 0,
        };
        if records.is_empty() {
            return Err(DataError::NoRows { path: source.to_string() }.into());
        }
        let column_error =
            |c: &Column, reason: String| -> Error { DataError::Column { path: source.into(), column: c.to_string(), reason }.into() };
        let resolve = |c: &Column| -> Result<usize> {
            match c {
                Column::Index(i) if *i < width => Ok(*i),
                Column::Index(_) => Err(column_error(c, format!("the file has {width} columns"))),
                Column::Last if width > 0 => Ok(width - 1),
                Column::Last => Err(column_error(c, "the file has no columns".into())),
                Column::Name(n) => match &header {
                    None => Err(column_error(c, "the file has no header row (`has_header: false`): choose columns by index".into())),
                    Some(h) => {
                        h.iter().position(|x| x == n).ok_or_else(|| column_error(c, format!("no such header; the headers are {h:?}")))
                    }
                },
            }
        };
        if opts.targets.is_empty() {
            return Err(
                DataError::Column { path: source.into(), column: "(none)".into(), reason: "no target column was chosen".into() }.into()
            );
        }
        let targets: Vec<usize> = opts.targets.iter().map(&resolve).collect::<Result<_>>()?;
        if opts.target_kind == TargetKind::Categorical && targets.len() != 1 {
            return Err(column_error(&opts.targets[1], "a categorical target is one column".into()));
        }
        let features: Vec<usize> = match &opts.features {
            Some(f) => f.iter().map(&resolve).collect::<Result<_>>()?,
            None => (0..width).filter(|c| !targets.contains(c)).collect(),
        };
        if features.is_empty() {
            return Err(
                DataError::Column { path: source.into(), column: "(features)".into(), reason: "no feature column is left".into() }.into()
            );
        }
        if let Some((pos, &c)) = features.iter().enumerate().find(|(_, c)| targets.contains(c)) {
            let chosen = opts.features.as_ref().map_or(Column::Index(c), |f| f[pos].clone());
            return Err(column_error(&chosen, "it is both a feature and a target".into()));
        }
        let col_name = |c: usize| header.as_ref().map_or_else(|| format!("column {c}"), |h| h[c].clone());
        let col_label = |c: usize| header.as_ref().map_or_else(|| format!("index {c}"), |h| format!("`{}` (index {c})", h[c]));
        let cell = |rec: &csv::StringRecord, row: usize, c: usize| -> Result<f64> {
            let line = rec.position().map_or(0, |p| p.line());
            let bad = |reason: String| -> Error { DataError::Cell { path: source.into(), line, row, column: col_label(c), reason }.into() };
            let text = rec.get(c).ok_or_else(|| bad(format!("the row has only {} fields", rec.len())))?;
            if text.is_empty() {
                return Err(bad("the cell is empty".into()));
            }
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(v),
                Ok(_) => Err(bad(format!("`{text}` is not a finite number"))),
                Err(_) => Err(bad(format!("`{text}` is not a number"))),
            }
        };
        let n = records.len();
        let mut x = Vec::with_capacity(n * features.len());
        for (row, rec) in records.iter().enumerate() {
            for &c in &features {
                x.push(cell(rec, row, c)?);
            }
        }
        let feature_names = features.iter().map(|&c| col_name(c)).collect();
        let target_names = targets.iter().map(|&c| col_name(c)).collect();
        let targets = match opts.target_kind {
            TargetKind::Real => {
                let mut y = Vec::with_capacity(n * targets.len());
                for (row, rec) in records.iter().enumerate() {
                    for &c in &targets {
                        y.push(cell(rec, row, c)?);
                    }
                }
                TableTargets::Real { y, d_out: targets.len() }
            }
            TargetKind::Categorical => {
                let c = targets[0];
                let mut values = Vec::with_capacity(n);
                for (row, rec) in records.iter().enumerate() {
                    match rec.get(c) {
                        Some(v) if !v.is_empty() => values.push(v),
                        _ => {
                            let line = rec.position().map_or(0, |p| p.line());
                            let reason = "the class is empty".to_string();
                            return Err(DataError::Cell { path: source.into(), line, row, column: col_label(c), reason }.into());
                        }
                    }
                }
                let classes = class_order(values.iter().copied().collect());
                let labels = values.iter().map(|v| classes.iter().position(|k| k == v).unwrap_or(0)).collect();
                TableTargets::Labels { labels, classes }
            }
        };
        Ok(Self { x, d_in: features.len(), targets, feature_names, target_names })
    }

    /// Number of rows.
    ///
    /// ```
    /// let t = weightspace::DataTable::regression(vec![1.0, 2.0], 1, vec![3.0, 4.0], 1)?;
    /// assert_eq!(t.len(), 2);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.x.len().checked_div(self.d_in).unwrap_or(0)
    }

    /// Whether there are no rows (never true for a table built by this crate).
    ///
    /// ```
    /// let t = weightspace::DataTable::regression(vec![1.0], 1, vec![3.0], 1)?;
    /// assert!(!t.is_empty());
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Target width: the number of target columns, or of classes.
    ///
    /// ```
    /// let t = weightspace::DataTable::regression(vec![1.0, 2.0], 1, vec![3.0, 4.0, 5.0, 6.0], 2)?;
    /// assert_eq!(t.d_out(), 2);
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn d_out(&self) -> usize {
        match &self.targets {
            TableTargets::Real { d_out, .. } => *d_out,
            TableTargets::Labels { classes, .. } => classes.len(),
        }
    }

    /// The rows `idx`, in that order (repetition allowed), with the same names and classes.
    ///
    /// ```
    /// use weightspace::{DataTable, TableTargets};
    /// let t = DataTable::regression(vec![1.0, 2.0, 3.0], 1, vec![10.0, 20.0, 30.0], 1)?;
    /// let r = t.rows(&[2, 0])?;
    /// assert_eq!((r.x.as_slice(), &r.targets), (&[3.0, 1.0][..], &TableTargets::Real { y: vec![30.0, 10.0], d_out: 1 }));
    /// assert!(t.rows(&[3]).is_err());
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn rows(&self, idx: &[usize]) -> Result<Self> {
        let n = self.len();
        if idx.is_empty() {
            return Err(Error::Empty { what: "row selection".into() });
        }
        if let Some(&bad) = idx.iter().find(|&&i| i >= n) {
            return Err(Error::Shape { what: "row index".into(), expected: format!("< {n}"), got: bad.to_string() });
        }
        let gather = |v: &[f64], w: usize| -> Vec<f64> { idx.iter().flat_map(|&i| v[i * w..(i + 1) * w].iter().copied()).collect() };
        let targets = match &self.targets {
            TableTargets::Real { y, d_out } => TableTargets::Real { y: gather(y, *d_out), d_out: *d_out },
            TableTargets::Labels { labels, classes } => {
                TableTargets::Labels { labels: idx.iter().map(|&i| labels[i]).collect(), classes: classes.clone() }
            }
        };
        Ok(Self {
            x: gather(&self.x, self.d_in),
            d_in: self.d_in,
            targets,
            feature_names: self.feature_names.clone(),
            target_names: self.target_names.clone(),
        })
    }

    /// The table as a validated [`Dataset`] on a device: regression for real targets,
    /// classification (one-hot) for labels.
    ///
    /// ```
    /// use weightspace::prelude::*;
    /// use weightspace::{DataTable, Targets};
    /// let t = DataTable::classification(vec![0.0, 1.0, 2.0], 1, vec![0, 1, 1], 2)?;
    /// let d: Dataset<f32, Cpu> = t.dataset(&Cpu::default())?;
    /// assert_eq!(d.targets, Targets::Labels { classes: 2, labels: vec![0, 1, 1] });
    /// # Ok::<(), weightspace::Error>(())
    /// ```
    pub fn dataset<E: Real, D: Device<E>>(&self, dev: &D) -> Result<Dataset<E, D>> {
        match &self.targets {
            TableTargets::Real { y, d_out } => Dataset::regression(dev, &self.x, self.d_in, y, *d_out),
            TableTargets::Labels { labels, classes } => Dataset::classification(dev, &self.x, self.d_in, labels, classes.len()),
        }
    }
}

/// The distinct class names in sorted order: numerically when all are numbers, else by text.
fn class_order(values: BTreeSet<&str>) -> Vec<String> {
    let numeric: Option<Vec<(f64, &str)>> = values.iter().map(|v| v.parse::<f64>().ok().map(|x| (x, *v))).collect();
    match numeric {
        Some(mut nums) => {
            nums.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            nums.into_iter().map(|(_, v)| v.to_string()).collect()
        }
        None => values.into_iter().map(str::to_string).collect(),
    }
}

#[cfg(feature = "ndarray")]
mod ndarray_input {
    use ndarray::{ArrayBase, Data, Dimension, Ix2};

    use super::DataTable;
    use crate::{Error, Result};

    /// The elements of `a` in row-major order and its `(rows, cols)`; a 1-D array is one column.
    pub(super) fn row_major<T: Clone, S: Data<Elem = T>, I: Dimension>(a: &ArrayBase<S, I>, what: &str) -> Result<(Vec<T>, usize, usize)> {
        let shape = a.shape();
        let (rows, cols) = match *shape {
            [r] => (r, 1),
            [r, c] => (r, c),
            _ => return Err(Error::Shape { what: what.into(), expected: "a 1-D or 2-D array".into(), got: format!("shape {shape:?}") }),
        };
        Ok((a.iter().cloned().collect(), rows, cols))
    }

    impl DataTable {
        /// A regression table from an `(n, d_in)` feature array and an `(n,)` or `(n, d_out)`
        /// target array (any layout; views too). Needs the `ndarray` cargo feature.
        ///
        /// ```
        /// use ndarray::array;
        /// use weightspace::DataTable;
        /// let t = DataTable::from_ndarray(&array![[1.0, 2.0], [3.0, 4.0]], &array![0.5, 0.7])?;
        /// assert_eq!((t.len(), t.d_in, t.d_out()), (2, 2, 1));
        /// assert!(DataTable::from_ndarray(&array![[1.0], [2.0]], &array![0.5]).is_err()); // 2 rows vs 1
        /// # Ok::<(), weightspace::Error>(())
        /// ```
        pub fn from_ndarray<S1, S2, I>(x: &ArrayBase<S1, Ix2>, y: &ArrayBase<S2, I>) -> Result<Self>
        where
            S1: Data<Elem = f64>,
            S2: Data<Elem = f64>,
            I: Dimension,
        {
            let (xv, n, d_in) = row_major(x, "x (features)")?;
            let (yv, ny, d_out) = row_major(y, "y (targets)")?;
            if ny != n {
                return Err(super::rows_mismatch(n, "y (targets)", ny));
            }
            DataTable::regression(xv, d_in, yv, d_out)
        }

        /// A classification table from an `(n, d_in)` feature array and `n` labels; the number of
        /// classes is the largest label plus one. Needs the `ndarray` cargo feature.
        ///
        /// ```
        /// use ndarray::array;
        /// use weightspace::{DataTable, TableTargets};
        /// let t = DataTable::from_ndarray_labels(&array![[0.1], [0.9], [0.5]], &array![0usize, 2, 1])?;
        /// assert!(matches!(&t.targets, TableTargets::Labels { classes, .. } if classes.len() == 3));
        /// # Ok::<(), weightspace::Error>(())
        /// ```
        pub fn from_ndarray_labels<S1, S2, I>(x: &ArrayBase<S1, Ix2>, labels: &ArrayBase<S2, I>) -> Result<Self>
        where
            S1: Data<Elem = f64>,
            S2: Data<Elem = usize>,
            I: Dimension,
        {
            let (xv, n, d_in) = row_major(x, "x (features)")?;
            let (lv, nl, cols) = row_major(labels, "labels")?;
            if cols != 1 || nl != n {
                return Err(Error::Shape { what: "labels".into(), expected: format!("({n},)"), got: format!("{:?}", labels.shape()) });
            }
            let classes = lv.iter().max().map_or(0, |m| m + 1);
            DataTable::classification(xv, d_in, lv, classes)
        }

        /// Replaces generated names with `names` when it has one per feature.
        pub(super) fn with_feature_names(mut self, given: &[String]) -> Self {
            if given.len() == self.d_in {
                self.feature_names = given.to_vec();
            }
            self
        }
    }

    #[cfg(feature = "linfa")]
    impl DataTable {
        /// A regression table from a linfa dataset with real targets, `(n,)` or `(n, d_out)`,
        /// keeping its feature names. Needs the `linfa` cargo feature.
        ///
        /// ```
        /// use ndarray::array;
        /// use weightspace::DataTable;
        /// let ds = linfa::Dataset::new(array![[1.0, 2.0], [3.0, 4.0]], array![0.5, 0.7])
        ///     .with_feature_names(vec!["a", "b"]);
        /// let t = DataTable::from_linfa_regression(&ds)?;
        /// assert_eq!((t.len(), t.feature_names.as_slice()), (2, &["a".to_string(), "b".into()][..]));
        /// # Ok::<(), weightspace::Error>(())
        /// ```
        pub fn from_linfa_regression<S1, S2, I>(ds: &linfa::DatasetBase<ArrayBase<S1, Ix2>, ArrayBase<S2, I>>) -> Result<Self>
        where
            S1: Data<Elem = f64>,
            S2: Data<Elem = f64>,
            I: Dimension,
        {
            Ok(DataTable::from_ndarray(&ds.records, &ds.targets)?.with_feature_names(ds.feature_names()))
        }

        /// A classification table from a linfa dataset with `usize` labels (as
        /// `linfa_datasets::iris()` has), keeping its feature names. Needs the `linfa` cargo
        /// feature.
        ///
        /// ```
        /// use ndarray::array;
        /// use weightspace::{DataTable, TableTargets};
        /// let ds = linfa::Dataset::new(array![[0.1], [0.9]], array![1usize, 0]);
        /// let t = DataTable::from_linfa_classification(&ds)?;
        /// assert_eq!(t.targets, TableTargets::Labels { labels: vec![1, 0], classes: vec!["0".into(), "1".into()] });
        /// # Ok::<(), weightspace::Error>(())
        /// ```
        pub fn from_linfa_classification<S1, S2, I>(ds: &linfa::DatasetBase<ArrayBase<S1, Ix2>, ArrayBase<S2, I>>) -> Result<Self>
        where
            S1: Data<Elem = f64>,
            S2: Data<Elem = usize>,
            I: Dimension,
        {
            Ok(DataTable::from_ndarray_labels(&ds.records, &ds.targets)?.with_feature_names(ds.feature_names()))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use ndarray::array;

        #[test]
        fn row_major_reads_a_transposed_view_in_logical_order() {
            let a = array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]];
            let t = a.t();
            let (v, r, c) = row_major(&t, "a").unwrap();
            assert_eq!((v, r, c), (vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0], 3, 2));
        }
    }
}
