//! Adapter tests on small trees written in each dataset's exact on-disk format.

use std::path::Path;

use super::*;

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("test path has a parent")).expect("mkdir");
    std::fs::write(p, content).expect("write test file");
}

fn touch_all(root: &Path, listing: &Listing) {
    for r in &listing.records {
        write(root, &r.path, "x");
    }
}

fn opts() -> ListOptions {
    ListOptions::default()
}

#[test]
fn split_names_round_trip() {
    for s in Split::ALL {
        assert_eq!(Split::parse(s.as_str()), Some(s));
        // serde writes the same name.
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        assert_eq!(
            serde_json::from_str::<Split>(&format!("\"{s}\"")).unwrap(),
            s
        );
    }
    assert_eq!(Split::Gallery.as_str(), "gallery");
    assert_eq!(Split::parse("val"), None);
}

#[test]
fn missing_root_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = list(DatasetKind::Cub, &dir.path().join("nope"), &opts()).unwrap_err();
    assert!(matches!(err, DatasetError::RootMissing { .. }), "{err}");
}

// ---------------------------------------------------------------- CUB

fn cub_tree(root: &Path) {
    write(
        root,
        "images.txt",
        "1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg\r\n\
         2 001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg\r\n\
         3 100.Brown_Pelican/Brown_Pelican_0001_94.jpg\r\n\
         4 101.White_Pelican/._White_Pelican_0001_97.jpg\r\n\
         5 101.White_Pelican/White_Pelican_0025_97604.jpg\r\n\
         6 200.Common_Yellowthroat/Common_Yellowthroat_0055_190967.jpg\r\n",
    );
    write(
        root,
        "image_class_labels.txt",
        "1 1\r\n2 1\r\n3 100\r\n4 101\r\n5 101\r\n6 200\r\n",
    );
    // the classification split must be ignored, even if it is garbage
    write(root, "train_test_split.txt", "not a split file\n");
}

#[test]
fn cub_lists_images_with_class_split() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    cub_tree(root);
    let l = list(DatasetKind::Cub, root, &opts()).expect("cub lists");
    assert_eq!(l.list_files, vec!["images.txt", "image_class_labels.txt"]);
    let got: Vec<(&str, u32, &str, Split)> = l
        .records
        .iter()
        .map(|r| (r.path.as_str(), r.class_id, r.class_name.as_str(), r.split))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
                1,
                "001.Black_footed_Albatross",
                Split::Train
            ),
            (
                "images/001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
                1,
                "001.Black_footed_Albatross",
                Split::Train
            ),
            (
                "images/100.Brown_Pelican/Brown_Pelican_0001_94.jpg",
                100,
                "100.Brown_Pelican",
                Split::Train
            ),
            (
                "images/101.White_Pelican/White_Pelican_0025_97604.jpg",
                101,
                "101.White_Pelican",
                Split::Test
            ),
            (
                "images/200.Common_Yellowthroat/Common_Yellowthroat_0055_190967.jpg",
                200,
                "200.Common_Yellowthroat",
                Split::Test
            ),
        ]
    );
    // images are not on disk yet
    let err = check_files_exist(root, &l.records).unwrap_err();
    match err {
        DatasetError::ImagesMissing { count, first, .. } => {
            assert_eq!(count, 5);
            assert_eq!(first[0], l.records[0].path);
        }
        other => panic!("unexpected {other}"),
    }
    touch_all(root, &l);
    check_files_exist(root, &l.records).expect("all present");
    std::fs::remove_file(root.join(&l.records[3].path)).expect("rm");
    assert_eq!(
        missing_files(
            root,
            &l.records.iter().map(|r| r.path.clone()).collect::<Vec<_>>()
        ),
        vec![l.records[3].path.clone()]
    );
}

#[test]
fn cub_bad_line_names_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    cub_tree(root);
    write(root, "image_class_labels.txt", "1 1\r\n2 x1\r\n");
    let err = list(DatasetKind::Cub, root, &opts()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, DatasetError::ParseLine { line_no: 2, .. }),
        "{msg}"
    );
    assert!(msg.contains("image_class_labels.txt:2"), "{msg}");
    assert!(msg.contains("`2 x1`"), "{msg}");
}

#[test]
fn cub_class_out_of_range_and_missing_label() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    cub_tree(root);
    write(root, "image_class_labels.txt", "1 1\n2 201\n");
    let err = list(DatasetKind::Cub, root, &opts()).unwrap_err();
    assert!(err.to_string().contains("outside 1..=200"), "{err}");

    write(
        root,
        "image_class_labels.txt",
        "1 1\n2 1\n3 100\n4 101\n5 101\n",
    );
    let err = list(DatasetKind::Cub, root, &opts()).unwrap_err();
    assert!(matches!(err, DatasetError::BadClassId { .. }), "{err}");
    assert!(err.to_string().contains("image id 6"), "{err}");
}

#[test]
fn cub_missing_list_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "images.txt", "1 a/b.jpg\n");
    let err = list(DatasetKind::Cub, root, &opts()).unwrap_err();
    assert!(matches!(err, DatasetError::ListFileMissing { .. }), "{err}");
    assert!(err.to_string().contains("image_class_labels.txt"), "{err}");
}

// ---------------------------------------------------------------- SOP

fn sop_tree(root: &Path) {
    write(
        root,
        "Ebay_train.txt",
        "image_id class_id super_class_id path\r\n\
         1 1 1 bicycle_final/111085122871_0.JPG\r\n\
         2 1 1 bicycle_final/111085122871_1.JPG\r\n\
         3 2 2 cabinet_final/111265328556_0.JPG\r\n",
    );
    write(
        root,
        "Ebay_test.txt",
        "image_id class_id super_class_id path\n\
         1 11319 1 bicycle_final/251952414262_0.JPG\n\
         2 11319 1 bicycle_final/251952414262_1.JPG\n",
    );
}

#[test]
fn sop_lists_both_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    sop_tree(root);
    let l = list(DatasetKind::Sop, root, &opts()).expect("sop lists");
    assert_eq!(l.list_files, vec!["Ebay_train.txt", "Ebay_test.txt"]);
    assert_eq!(l.records.len(), 5);
    assert_eq!(l.records[0].path, "bicycle_final/111085122871_0.JPG");
    assert_eq!(l.records[0].class_name, "bicycle_1");
    assert_eq!(l.records[2].class_id, 2);
    assert_eq!(l.records[2].split, Split::Train);
    assert_eq!(l.records[3].class_id, 11319);
    assert_eq!(l.records[3].split, Split::Test);
    touch_all(root, &l);
    check_files_exist(root, &l.records).expect("present");
}

#[test]
fn sop_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    sop_tree(root);
    write(root, "Ebay_train.txt", "1 1 1 bicycle_final/a.JPG\n");
    let err = list(DatasetKind::Sop, root, &opts()).unwrap_err();
    assert!(err.to_string().contains("Ebay_train.txt:1"), "{err}");
    assert!(err.to_string().contains("header"), "{err}");

    write(
        root,
        "Ebay_train.txt",
        "image_id class_id super_class_id path\n1 1 1 bicycle_final/a.JPG\n2 1 bicycle_final/b.JPG\n",
    );
    let err = list(DatasetKind::Sop, root, &opts()).unwrap_err();
    assert!(
        matches!(err, DatasetError::ParseLine { line_no: 3, .. }),
        "{err}"
    );

    // a class in both splits
    write(
        root,
        "Ebay_train.txt",
        "image_id class_id super_class_id path\n1 11319 1 bicycle_final/a.JPG\n",
    );
    let err = list(DatasetKind::Sop, root, &opts()).unwrap_err();
    assert!(matches!(err, DatasetError::BadClassId { .. }), "{err}");
}

// ---------------------------------------------------------------- In-shop

const INSHOP: &str = "5\r\n\
image_name                                             item_id  evaluation_status\r\n\
img/WOMEN/Dresses/id_00000002/02_1_front.jpg           id_00000002     train\r\n\
img/WOMEN/Dresses/id_00000002/02_2_side.jpg            id_00000002     train\r\n\
img/MEN/Denim/id_00000080/01_1_front.jpg               id_00000080     query \r\n\
img/MEN/Denim/id_00000080/01_2_side.jpg                id_00000080     gallery\r\n\
img/MEN/Denim/id_00000081/01_1_front.jpg               id_00000081	gallery\r\n";

#[test]
fn inshop_lists_three_splits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "list_eval_partition.txt", INSHOP);
    let l = list(DatasetKind::Inshop, root, &opts()).expect("inshop lists");
    assert_eq!(l.list_files, vec!["list_eval_partition.txt"]);
    let got: Vec<(&str, u32, &str, Split)> = l
        .records
        .iter()
        .map(|r| (r.path.as_str(), r.class_id, r.class_name.as_str(), r.split))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "img/WOMEN/Dresses/id_00000002/02_1_front.jpg",
                2,
                "id_00000002",
                Split::Train
            ),
            (
                "img/WOMEN/Dresses/id_00000002/02_2_side.jpg",
                2,
                "id_00000002",
                Split::Train
            ),
            (
                "img/MEN/Denim/id_00000080/01_1_front.jpg",
                80,
                "id_00000080",
                Split::Query
            ),
            (
                "img/MEN/Denim/id_00000080/01_2_side.jpg",
                80,
                "id_00000080",
                Split::Gallery
            ),
            (
                "img/MEN/Denim/id_00000081/01_1_front.jpg",
                81,
                "id_00000081",
                Split::Gallery
            ),
        ]
    );
}

#[test]
fn inshop_archive_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "Eval/list_eval_partition.txt", INSHOP);
    std::fs::create_dir_all(root.join("Img/img")).expect("mkdir");
    let l = list(DatasetKind::Inshop, root, &opts()).expect("inshop lists");
    assert_eq!(l.list_files, vec!["Eval/list_eval_partition.txt"]);
    assert_eq!(
        l.records[0].path,
        "Img/img/WOMEN/Dresses/id_00000002/02_1_front.jpg"
    );
}

#[test]
fn inshop_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "list_eval_partition.txt",
        &INSHOP.replacen("5\r\n", "6\r\n", 1),
    );
    let err = list(DatasetKind::Inshop, root, &opts()).unwrap_err();
    assert!(
        err.to_string()
            .contains("declares 6 images but the file lists 5"),
        "{err}"
    );

    write(
        root,
        "list_eval_partition.txt",
        &INSHOP.replacen("query", "val", 1),
    );
    let err = list(DatasetKind::Inshop, root, &opts()).unwrap_err();
    assert!(
        matches!(err, DatasetError::ParseLine { line_no: 5, .. }),
        "{err}"
    );

    write(
        root,
        "list_eval_partition.txt",
        &INSHOP.replacen("id_00000080     query", "id_00000002     query", 1),
    );
    let err = list(DatasetKind::Inshop, root, &opts()).unwrap_err();
    assert!(matches!(err, DatasetError::BadClassId { .. }), "{err}");

    write(
        root,
        "list_eval_partition.txt",
        &INSHOP.replacen("id_00000081\tgallery", "item81\tgallery", 1),
    );
    let err = list(DatasetKind::Inshop, root, &opts()).unwrap_err();
    assert!(
        matches!(err, DatasetError::ParseLine { line_no: 7, .. }),
        "{err}"
    );

    std::fs::remove_file(root.join("list_eval_partition.txt")).expect("rm");
    let err = list(DatasetKind::Inshop, root, &opts()).unwrap_err();
    assert!(matches!(err, DatasetError::ListFileMissing { .. }), "{err}");
}

// ---------------------------------------------------------------- Cars196

#[test]
fn cars_annotation_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(
        root,
        "cars_annos.txt",
        "# relpath class\r\ncar_ims/000001.jpg 1\r\ncar_ims/000002.jpg,98\r\ncar_ims/000003.jpg   99\r\ncar_ims/000004.jpg 196\r\n",
    );
    let l = list(DatasetKind::Cars196, root, &opts()).expect("cars lists");
    assert_eq!(l.list_files, vec!["cars_annos.txt"]);
    let got: Vec<(&str, u32, &str, Split)> = l
        .records
        .iter()
        .map(|r| (r.path.as_str(), r.class_id, r.class_name.as_str(), r.split))
        .collect();
    assert_eq!(
        got,
        vec![
            ("car_ims/000001.jpg", 1, "class_001", Split::Train),
            ("car_ims/000002.jpg", 98, "class_098", Split::Train),
            ("car_ims/000003.jpg", 99, "class_099", Split::Test),
            ("car_ims/000004.jpg", 196, "class_196", Split::Test),
        ]
    );

    let names: String = (1..=196).map(|i| format!("Car Model {i} 2012\n")).collect();
    write(root, "class_names.txt", &names);
    let l = list(DatasetKind::Cars196, root, &opts()).expect("cars lists");
    assert_eq!(l.list_files, vec!["cars_annos.txt", "class_names.txt"]);
    assert_eq!(l.records[2].class_name, "Car Model 99 2012");

    write(root, "cars_annos.txt", "car_ims/000001.jpg 197\n");
    let err = list(DatasetKind::Cars196, root, &opts()).unwrap_err();
    assert!(
        matches!(err, DatasetError::ParseLine { line_no: 1, .. }),
        "{err}"
    );
}

#[test]
fn cars_folder_per_class() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for c in 1..=196 {
        write(root, &format!("{c:03}_model/{c}.jpg"), "x");
    }
    let l = list(DatasetKind::Cars196, root, &opts()).expect("cars lists");
    assert_eq!(l.records.len(), 196);
    assert_eq!(l.records[97].class_id, 98);
    assert_eq!(l.records[97].split, Split::Train);
    assert_eq!(l.records[98].class_id, 99);
    assert_eq!(l.records[98].class_name, "099_model");
    assert_eq!(l.records[98].split, Split::Test);

    std::fs::remove_dir_all(root.join("196_model")).expect("rm");
    let err = list(DatasetKind::Cars196, root, &opts()).unwrap_err();
    assert!(err.to_string().contains("found 195 class folders"), "{err}");
}

#[test]
fn cars_official_mat_file_gets_the_conversion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "cars_annos.mat", "MATLAB 5.0 MAT-file");
    write(root, "car_ims/000001.jpg", "x");
    let err = list(DatasetKind::Cars196, root, &opts()).unwrap_err();
    assert!(matches!(err, DatasetError::NeedsConversion { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("cars_annos.mat"), "{text}");
    assert!(
        text.contains("> cars_annos.txt") && text.contains("> class_names.txt"),
        "{text}"
    );
    assert!(text.contains(&root.display().to_string()), "{text}");
}

// ---------------------------------------------------------------- folder

fn folder_tree(root: &Path) {
    for (class, files) in [
        ("cat", vec!["b.jpg", "a.JPEG"]),
        ("dog", vec!["x.png"]),
        ("emu", vec!["e.jpg"]),
        ("ant", vec!["1.jpg", "2.jpg"]),
        ("bee", vec!["q.jpg"]),
    ] {
        for f in files {
            write(root, &format!("{class}/{f}"), "x");
        }
    }
    write(root, "cat/._b.jpg", "junk");
    write(root, "cat/notes.txt", "junk");
    write(root, "cat/deeper/z.jpg", "x");
    write(root, ".hidden/h.jpg", "x");
    write(root, "README.md", "top-level file");
}

#[test]
fn folder_default_split_is_first_half() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    folder_tree(root);
    let l = list(DatasetKind::Folder, root, &opts()).expect("folder lists");
    assert!(l.list_files.is_empty());
    let got: Vec<(&str, u32, Split)> = l
        .records
        .iter()
        .map(|r| (r.path.as_str(), r.class_id, r.split))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ant/1.jpg", 0, Split::Train),
            ("ant/2.jpg", 0, Split::Train),
            ("bee/q.jpg", 1, Split::Train),
            ("cat/a.JPEG", 2, Split::Train),
            ("cat/b.jpg", 2, Split::Train),
            ("dog/x.png", 3, Split::Test),
            ("emu/e.jpg", 4, Split::Test),
        ]
    );
    assert_eq!(l.records[5].class_name, "dog");
    check_files_exist(root, &l.records).expect("present");
}

#[test]
fn folder_explicit_train_classes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    folder_tree(root);
    let o = ListOptions {
        train_classes: Some(vec!["emu".into(), "ant".into()]),
    };
    let l = list(DatasetKind::Folder, root, &o).expect("folder lists");
    let train: Vec<&str> = l
        .records
        .iter()
        .filter(|r| r.split == Split::Train)
        .map(|r| r.class_name.as_str())
        .collect();
    assert_eq!(train, vec!["ant", "ant", "emu"]);

    let o = ListOptions {
        train_classes: Some(vec!["gnu".into()]),
    };
    let err = list(DatasetKind::Folder, root, &o).unwrap_err();
    assert!(err.to_string().contains("dataset.train_classes"), "{err}");
    assert!(err.to_string().contains("gnu"), "{err}");
}

#[test]
fn folder_empty_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = list(DatasetKind::Folder, dir.path(), &opts()).unwrap_err();
    assert!(matches!(err, DatasetError::EmptyDataset { .. }), "{err}");
    std::fs::create_dir_all(dir.path().join("a")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("b")).expect("mkdir");
    let err = list(DatasetKind::Folder, dir.path(), &opts()).unwrap_err();
    assert!(err.to_string().contains("found no image"), "{err}");
}
