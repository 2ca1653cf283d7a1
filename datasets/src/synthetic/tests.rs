//! Synthetic-set tests: byte-identical regeneration, seeds matter, the folder adapter reads it, designs differ.

use super::*;
use crate::listing::{list, DatasetKind, ListOptions, Split};

fn small(seed: u64, format: SyntheticFormat) -> SyntheticSpec {
    SyntheticSpec {
        classes: 4,
        images_per_class: 3,
        image_size: 32,
        seed,
        format,
    }
}

fn all_files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for class in crate::listing::folder::class_folders(root).expect("ls") {
        for f in crate::listing::folder::image_files(&root.join(&class)).expect("ls") {
            let rel = format!("{class}/{f}");
            let bytes = std::fs::read(root.join(&rel)).expect("read");
            out.push((rel, bytes));
        }
    }
    out
}

#[test]
fn same_spec_gives_byte_identical_files() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let spec = small(5, SyntheticFormat::Jpeg);
    generate(&spec, a.path()).expect("generate");
    generate(&spec, b.path()).expect("generate");
    let fa = all_files(a.path());
    assert_eq!(fa.len(), 12);
    assert_eq!(fa, all_files(b.path()));
    assert_eq!(fa[0].0, "class_0000/img_000.jpg");
    assert!(fa[0].1.starts_with(&[0xFF, 0xD8, 0xFF]));

    let c = tempfile::tempdir().expect("tempdir");
    generate(&small(6, SyntheticFormat::Jpeg), c.path()).expect("generate");
    let fc = all_files(c.path());
    assert!(
        fa.iter().zip(&fc).all(|(x, y)| x.1 != y.1),
        "another seed changes every image"
    );
}

#[test]
fn images_within_a_class_differ() {
    let spec = small(1, SyntheticFormat::Png);
    let a = render_image(&spec, 2, 0);
    let b = render_image(&spec, 2, 1);
    assert_ne!(a.data, b.data);
}

#[test]
fn png_files_hold_exactly_the_rendered_pixels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = small(2, SyntheticFormat::Png);
    generate(&spec, dir.path()).expect("generate");
    let img = crate::imaging::decode(&dir.path().join(spec.rel_path(3, 2))).expect("decode");
    assert_eq!(img, render_image(&spec, 3, 2));
}

#[test]
fn the_folder_adapter_lists_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SyntheticSpec {
        classes: 6,
        images_per_class: 2,
        image_size: 24,
        ..SyntheticSpec::default()
    };
    generate(&spec, dir.path()).expect("generate");
    let l = list(DatasetKind::Folder, dir.path(), &ListOptions::default()).expect("list");
    assert_eq!(l.records.len(), 12);
    assert_eq!(
        l.records.iter().filter(|r| r.split == Split::Train).count(),
        6
    );
    assert_eq!(l.records[11].class_id, 5);
    assert_eq!(l.records[11].class_name, "class_0005");
    for r in &l.records {
        assert_eq!(
            crate::imaging::image_dims(&dir.path().join(&r.path)).expect("dims"),
            (24, 24)
        );
    }
}

#[test]
fn class_designs_are_distinct_and_varied() {
    let designs: Vec<ClassDesign> = (0..200).map(|c| design(0, c)).collect();
    for i in 0..designs.len() {
        for j in i + 1..designs.len() {
            assert_ne!(designs[i], designs[j], "classes {i} and {j}");
        }
    }
    let families: std::collections::BTreeSet<String> = designs
        .iter()
        .map(|d| {
            format!("{:?}", d.shape)
                .split(['(', ' '])
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(families.len() >= 5, "{families:?}");
    let textures: std::collections::BTreeSet<String> = designs
        .iter()
        .map(|d| {
            format!("{:?}", d.texture)
                .split(' ')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(textures.len(), 4, "{textures:?}");
    assert!(designs.iter().all(|d| (2..=3).contains(&d.colors.len())));
}

#[test]
fn bad_specs_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = generate(
        &SyntheticSpec {
            classes: 1,
            ..SyntheticSpec::default()
        },
        dir.path(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("synthetic.classes"), "{err}");
    let err = generate(
        &SyntheticSpec {
            image_size: 8,
            ..SyntheticSpec::default()
        },
        dir.path(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("synthetic.image_size"), "{err}");
    let spec: SyntheticSpec = serde_json::from_str(r#"{"classes": 10}"#).expect("defaults fill in");
    assert_eq!(spec.images_per_class, 12);
    assert!(serde_json::from_str::<SyntheticSpec>(r#"{"clases": 10}"#).is_err());
}
