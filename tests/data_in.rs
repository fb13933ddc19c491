//! Data in: CSV files (good and malformed), ndarray and linfa sources, the UCI splits against
//! NumPy's indices, and standardisation with its inverse.

use std::path::PathBuf;

use proptest::prelude::*;
use weightspace::prelude::*;
use weightspace::{Column, CsvOptions, DataError, DataTable, Split, Standardiser, TableTargets, TargetKind, UciSplits};

/// Writes `text` to a fresh file under the target's scratch directory.
fn file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("data_in");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing the test file");
    path
}

fn read(name: &str, text: &str, opts: &CsvOptions) -> weightspace::Result<DataTable> {
    DataTable::from_csv(file(name, text), opts)
}

// ---- CSV: choosing columns

#[test]
fn columns_by_name_and_by_index_read_the_same_values() {
    let text = "id,a,b,target\n1,0.5,2,10\n2,1.5,-3,20\n3,2.5,4e1,30\n";
    let by_name = CsvOptions { features: Some(vec!["b".into(), "a".into()]), targets: vec!["target".into()], ..Default::default() };
    let by_index = CsvOptions { features: Some(vec![2.into(), 1.into()]), targets: vec![3.into()], ..Default::default() };
    let t = read("cols.csv", text, &by_name).unwrap();
    assert_eq!(t, read("cols.csv", text, &by_index).unwrap());
    assert_eq!(t.x, [2.0, 0.5, -3.0, 1.5, 40.0, 2.5]);
    assert_eq!((t.feature_names.as_slice(), t.target_names.as_slice()), (&["b".to_string(), "a".into()][..], &["target".to_string()][..]));
    assert_eq!(t.targets, TableTargets::Real { y: vec![10.0, 20.0, 30.0], d_out: 1 });
    // default: the last column is the target, every other column a feature
    let all = read("cols.csv", text, &CsvOptions::default()).unwrap();
    assert_eq!((all.d_in, all.feature_names.clone()), (3, vec!["id".to_string(), "a".into(), "b".into()]));
}

#[test]
fn headerless_files_take_columns_by_index_and_several_targets() {
    let text = "1,2,3,4\n5,6,7,8\n";
    let opts = CsvOptions { has_header: false, targets: vec![0.into(), Column::Last], ..Default::default() };
    let t = read("nohead.csv", text, &opts).unwrap();
    assert_eq!((t.x.as_slice(), t.d_in), (&[2.0, 3.0, 6.0, 7.0][..], 2));
    assert_eq!(t.targets, TableTargets::Real { y: vec![1.0, 4.0, 5.0, 8.0], d_out: 2 });
    assert_eq!(t.target_names, ["column 0", "column 3"]);
    // a name needs a header
    let by_name = CsvOptions { has_header: false, targets: vec!["y".into()], ..Default::default() };
    let err = read("nohead.csv", text, &by_name).unwrap_err().to_string();
    assert!(err.contains("nohead.csv: column `y`") && err.contains("no header row"), "{err}");
}

#[test]
fn a_categorical_target_maps_to_sorted_class_indices_and_returns_the_mapping() {
    let text = "x,species\n1,virginica\n2,setosa\n3,versicolor\n4,setosa\n";
    let opts = CsvOptions { targets: vec!["species".into()], target_kind: TargetKind::Categorical, ..Default::default() };
    let t = read("species.csv", text, &opts).unwrap();
    let TableTargets::Labels { labels, classes } = &t.targets else { panic!("labels expected, got {:?}", t.targets) };
    assert_eq!(classes, &["setosa", "versicolor", "virginica"]);
    assert_eq!(labels, &[2, 0, 1, 0]);
    let d: Dataset<f32, Cpu> = t.dataset(&Cpu::default()).unwrap();
    assert_eq!(d.targets, weightspace::Targets::Labels { classes: 3, labels: vec![2, 0, 1, 0] });
    // numeric class names sort as numbers (2 before 10), not as text
    let t =
        read("grades.csv", "x,g\n0,10\n1,2\n2,2\n", &CsvOptions { target_kind: TargetKind::Categorical, ..Default::default() }).unwrap();
    assert_eq!(t.targets, TableTargets::Labels { labels: vec![1, 0, 0], classes: vec!["2".into(), "10".into()] });
}

#[test]
fn quoting_whitespace_and_other_delimiters_are_the_csv_crates_job() {
    let text = "\"a, with comma\";b\n 1.5 ;\"2\"\n3;4\n";
    let t = read("semi.csv", text, &CsvOptions { delimiter: b';', ..Default::default() }).unwrap();
    assert_eq!((t.feature_names[0].as_str(), t.x.as_slice()), ("a, with comma", &[1.5, 3.0][..]));
}

// ---- CSV: bad input is an error naming the file, the row and the column

fn data_error(e: weightspace::Error) -> DataError {
    match e {
        weightspace::Error::Data(d) => d,
        other => panic!("expected Error::Data, got {other:?}"),
    }
}

#[test]
fn missing_and_non_numeric_cells_name_the_path_row_and_column() {
    for (name, cell, reason) in [
        ("empty.csv", "", "the cell is empty"),
        ("text.csv", "n/a", "`n/a` is not a number"),
        ("nan.csv", "NaN", "`NaN` is not a finite number"),
        ("inf.csv", "-inf", "`-inf` is not a finite number"),
    ] {
        let path = file(name, &format!("a,b,y\n1,2,3\n4,5,6\n7,{cell},9\n"));
        let err = DataTable::from_csv(&path, &CsvOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert_eq!(msg, format!("{}:4: row 2, column `b` (index 1): {reason}", path.display()));
        let DataError::Cell { row, line, column, .. } = data_error(err) else { panic!("{msg}") };
        assert_eq!((row, line, column.as_str()), (2, 4, "`b` (index 1)"));
    }
    // in a target column too, and without a header the column is its index
    let err = read("ytext.csv", "1,2\n3,x\n", &CsvOptions { has_header: false, ..Default::default() }).unwrap_err().to_string();
    assert!(err.ends_with("ytext.csv:2: row 1, column index 1: `x` is not a number"), "{err}");
    // an empty class name
    let opts = CsvOptions { target_kind: TargetKind::Categorical, ..Default::default() };
    let err = read("noclass.csv", "x,c\n1,a\n2,\n", &opts).unwrap_err().to_string();
    assert!(err.ends_with("noclass.csv:3: row 1, column `c` (index 1): the class is empty"), "{err}");
}

#[test]
fn ragged_rows_unknown_columns_and_missing_files_are_errors_with_the_path() {
    let err = read("ragged.csv", "a,b,y\n1,2,3\n4,5\n", &CsvOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ragged.csv:3: ") && msg.contains("found record with 2 fields"), "{msg}");
    let DataError::Csv { line, .. } = data_error(err.clone()) else { panic!("{msg}") };
    assert_eq!(line, Some(3));
    assert!(std::error::Error::source(&err).is_some(), "the csv crate's error is kept as the source");

    let opts = CsvOptions { targets: vec!["price".into()], ..Default::default() };
    let err = read("cols2.csv", "a,y\n1,2\n", &opts).unwrap_err().to_string();
    assert!(err.contains("cols2.csv: column `price`: no such header") && err.contains("[\"a\", \"y\"]"), "{err}");
    let err = read("cols2.csv", "a,y\n1,2\n", &CsvOptions { targets: vec![5.into()], ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("cols2.csv: column index 5: the file has 2 columns"), "{err}");
    let both = CsvOptions { features: Some(vec!["y".into()]), targets: vec!["y".into()], ..Default::default() };
    assert!(read("cols2.csv", "a,y\n1,2\n", &both).unwrap_err().to_string().contains("both a feature and a target"));
    let two = CsvOptions { targets: vec![0.into(), 1.into()], target_kind: TargetKind::Categorical, ..Default::default() };
    assert!(read("cols3.csv", "a,b,c\n1,2,3\n", &two).unwrap_err().to_string().contains("a categorical target is one column"));

    let err = read("header_only.csv", "a,y\n", &CsvOptions::default()).unwrap_err().to_string();
    assert!(err.ends_with("header_only.csv: no data rows"), "{err}");
    let missing = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("data_in/does_not_exist.csv");
    let err = DataTable::from_csv(&missing, &CsvOptions::default()).unwrap_err().to_string();
    assert!(err.starts_with(&missing.display().to_string()), "{err}");
    let err = read("binary.csv", "a,y\n1,\u{0}\u{1}\n", &CsvOptions::default()).unwrap_err().to_string();
    assert!(err.contains("binary.csv:2: row 0, column `y` (index 1)"), "{err}");
}

#[test]
fn invalid_utf8_is_an_error_not_a_panic() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("data_in");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("latin1.csv");
    std::fs::write(&path, b"a,y\n1,\xff\xfe\n").unwrap();
    let err = DataTable::from_csv(&path, &CsvOptions::default()).unwrap_err().to_string();
    assert!(err.contains("latin1.csv") && err.to_lowercase().contains("utf-8"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha, ..ProptestConfig::default() })]

    /// Arbitrary bytes, any header setting and column choice: an `Ok` table that is consistent, or
    /// an `Err` naming the source; never a panic.
    #[test]
    fn arbitrary_input_never_panics(
        bytes in proptest::collection::vec(prop_oneof![Just(b','), Just(b'\n'), Just(b'"'), Just(b'1'), Just(b'.'), Just(b'a'), any::<u8>()], 0..80),
        has_header in any::<bool>(),
        target in 0usize..4,
        categorical in any::<bool>(),
    ) {
        let opts = CsvOptions {
            has_header,
            targets: vec![target.into()],
            target_kind: if categorical { TargetKind::Categorical } else { TargetKind::Real },
            ..Default::default()
        };
        match DataTable::from_csv_reader(bytes.as_slice(), "fuzz.csv", &opts) {
            Ok(t) => {
                prop_assert_eq!(t.x.len(), t.len() * t.d_in);
                prop_assert!(t.x.iter().all(|v| v.is_finite()));
                prop_assert!(t.rows(&[0]).is_ok());
            }
            Err(e) => prop_assert!(e.to_string().starts_with("fuzz.csv"), "{}", e),
        }
    }
}

// ---- the UCI splits, against NumPy

/// `(n, test_fraction, seed, split, train, test)` of `tests/fixtures/uci_splits_numpy.txt`.
type FixtureSplit = (usize, f64, u32, usize, Vec<usize>, Vec<usize>);

fn fixture() -> Vec<FixtureSplit> {
    let text = include_str!("fixtures/uci_splits_numpy.txt");
    let mut out: Vec<FixtureSplit> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (n, frac, seed, k) = (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap());
        let idx: Vec<usize> = f[5..].iter().map(|v| v.parse().unwrap()).collect();
        match f[4] {
            "train" => out.push((n, frac, seed, k, idx, Vec::new())),
            "test" => out.last_mut().unwrap().5 = idx,
            other => panic!("bad fixture line kind {other}"),
        }
    }
    out
}

#[test]
fn uci_splits_reproduce_numpys_indices() {
    let fx = fixture();
    assert_eq!(fx.len(), 20 + 3 + 5 + 3);
    for (n, frac, seed, k, train, test) in &fx {
        let splits = UciSplits::with_seed(*n, k + 1, *frac, *seed).unwrap();
        let got: &Split = &splits[*k];
        assert_eq!(&got.train, train, "n={n} f={frac} seed={seed} split {k}: train");
        assert_eq!(&got.test, test, "n={n} f={frac} seed={seed} split {k}: test");
    }
    // the published seed is the default
    assert_eq!(UciSplits::new(308, 20, 0.1).unwrap(), UciSplits::with_seed(308, 20, 0.1, 1).unwrap());
}

#[test]
fn every_split_partitions_the_rows() {
    for split in &UciSplits::new(506, 20, 0.1).unwrap() {
        assert_eq!((split.train.len(), split.test.len()), (455, 51));
        let mut all: Vec<usize> = split.train.iter().chain(&split.test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..506).collect::<Vec<_>>());
    }
    assert!(UciSplits::new(1, 1, 0.1).is_err());
    assert!(UciSplits::new(10, 0, 0.1).is_err());
    assert!(UciSplits::new(10, 1, 0.0).is_err());
}

// ---- standardisation and its inverse

#[test]
fn standardisation_uses_the_training_split_only_and_inverts() {
    let x: Vec<f64> = (0..40).map(|i| (i as f64 * 0.37).sin() * 5.0 + 3.0).collect();
    let y: Vec<f64> = (0..20).map(|i| 100.0 + 7.0 * (i as f64 * 0.61).cos()).collect();
    let table = DataTable::regression(x, 2, y, 1).unwrap();
    let split = &UciSplits::new(20, 1, 0.25).unwrap()[0];
    let (train, test) = split.tables(&table).unwrap();
    let s = Standardiser::fit(&train).unwrap();
    let (ztr, zte) = (s.apply(&train).unwrap(), s.apply(&test).unwrap());
    let TableTargets::Real { y: ytr, .. } = &ztr.targets else { unreachable!() };
    let TableTargets::Real { y: yte, .. } = &zte.targets else { unreachable!() };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let sd = |v: &[f64]| (v.iter().map(|a| (a - mean(v)).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    // the training split is exactly standardised, the test split is not (its own stats were not used)
    assert!(mean(ytr).abs() < 1e-12 && (sd(ytr) - 1.0).abs() < 1e-12);
    assert!(mean(yte).abs() > 1e-3);
    let x0: Vec<f64> = ztr.x.iter().step_by(2).copied().collect();
    assert!(mean(&x0).abs() < 1e-12 && (sd(&x0) - 1.0).abs() < 1e-12);
    // the inverse maps the standardised test targets back to the originals
    let TableTargets::Real { y: orig, .. } = &test.targets else { unreachable!() };
    let back = s.mean_to_original(yte).unwrap();
    assert!(back.iter().zip(orig).all(|(a, b)| (a - b).abs() < 1e-9), "{back:?} vs {orig:?}");
}

/// A Gaussian predictive density computed in standardised units, shifted, equals the density of
/// the original-units prediction at the original target.
#[test]
fn the_log_likelihood_shift_is_the_change_of_units() {
    let table = DataTable::regression(vec![0.0, 1.0, 2.0, 3.0], 1, vec![10.0, 14.0, 11.0, 25.0], 1).unwrap();
    let s = Standardiser::fit(&table).unwrap();
    let log_normal = |y: f64, m: f64, sd: f64| -0.5 * ((y - m) / sd).powi(2) - sd.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();
    let (m_std, sd_std, y_orig) = (0.3, 0.8, 19.0);
    let y_std = (y_orig - s.y_mean[0]) / s.y_sd[0];
    let ll_std = log_normal(y_std, m_std, sd_std);
    let m = s.mean_to_original(&[m_std]).unwrap()[0];
    let sd = s.sd_to_original(&[sd_std]).unwrap()[0];
    let var = s.variance_to_original(&[sd_std * sd_std]).unwrap()[0];
    assert!((var - sd * sd).abs() < 1e-9);
    assert!((ll_std + s.log_likelihood_shift() - log_normal(y_orig, m, sd)).abs() < 1e-12);
    assert!((s.rmse_to_original(0.5).unwrap() - 0.5 * s.y_sd[0]).abs() < 1e-12);
}

#[test]
fn a_constant_column_is_only_centred() {
    let s = Standardiser::fit(&DataTable::regression(vec![4.0, 4.0, 4.0], 1, vec![1.0, 2.0, 3.0], 1).unwrap()).unwrap();
    assert_eq!((s.x_mean[0], s.x_sd[0]), (4.0, 1.0));
}

// ---- ndarray and linfa (features enabled by the facade's dev-dependency on weightspace-core)

#[test]
fn a_linfa_dataset_becomes_the_same_table_as_its_buffers() {
    let wine = linfa_datasets::winequality();
    let n = wine.records.nrows();
    let x: Vec<f64> = wine.records.iter().copied().collect();
    let y: Vec<f64> = wine.targets.iter().map(|&q| q as f64).collect();
    let by_hand = DataTable::regression(x, wine.records.ncols(), y.clone(), 1).unwrap();
    let yf = wine.targets.mapv(|q| q as f64);
    let ds = linfa::Dataset::new(wine.records.clone(), yf).with_feature_names(wine.feature_names().to_vec());
    let t = DataTable::from_linfa_regression(&ds).unwrap();
    assert_eq!((t.len(), t.d_in, &t.x, &t.targets), (n, 11, &by_hand.x, &by_hand.targets));
    assert_eq!(t.feature_names.as_slice(), wine.feature_names());

    let iris = linfa_datasets::iris();
    let t = DataTable::from_linfa_classification(&iris).unwrap();
    let TableTargets::Labels { labels, classes } = &t.targets else { unreachable!() };
    assert_eq!((labels.len(), classes.len()), (150, 3));
    assert_eq!(labels.as_slice(), iris.targets.as_slice().unwrap());
}

#[test]
fn ndarray_views_in_any_layout_are_read_row_major() {
    let x = ndarray::array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]];
    let y = ndarray::array![[7.0, 8.0, 9.0]];
    let t = DataTable::from_ndarray(&x.t(), &y.t()).unwrap();
    assert_eq!((t.x.as_slice(), t.d_in), (&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0][..], 2));
    assert_eq!(t.targets, TableTargets::Real { y: vec![7.0, 8.0, 9.0], d_out: 1 });
    let bad = ndarray::array![[f64::NAN, 1.0]];
    assert!(DataTable::from_ndarray(&bad, &ndarray::array![1.0]).is_err());
}
