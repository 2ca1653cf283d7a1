//! Loss tests: brute-force references on random batches, hand-computed cases, finite gradients and collapse behaviour.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Kind, Tensor};

use super::reference as r;
use super::*;

const SEEDS: [u64; 4] = [1, 7, 42, 2024];

/// A shuffled P×K batch with arbitrary class ids and Gaussian rows (scaled).
fn random_batch(
    seed: u64,
    p: usize,
    k: usize,
    dim: usize,
    scale: f64,
) -> (Vec<Vec<f64>>, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut labels: Vec<i64> = (0..p)
        .flat_map(|c| std::iter::repeat_n(3 * c as i64 + 1, k))
        .collect();
    // Shuffle rows so that no loss relies on sorted labels (except the layout-bound ones).
    for i in (1..labels.len()).rev() {
        labels.swap(i, rng.gen_range(0..=i));
    }
    let rows = (0..p * k)
        .map(|_| {
            (0..dim)
                .map(|_| scale * (rng.gen::<f64>() * 2.0 - 1.0))
                .collect()
        })
        .collect();
    (rows, labels)
}

/// P×K batch in the K-contiguous layout a P×K sampler produces.
fn pk_batch(seed: u64, p: usize, k: usize, dim: usize, scale: f64) -> (Vec<Vec<f64>>, Vec<i64>) {
    let (rows, _) = random_batch(seed, p, k, dim, scale);
    let labels = (0..p)
        .flat_map(|c| std::iter::repeat_n(c as i64 * 2 + 5, k))
        .collect();
    (rows, labels)
}

fn normalized(rows: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    rows.into_iter()
        .map(|v| {
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.into_iter().map(|x| x / n).collect()
        })
        .collect()
}

fn tensors(rows: &[Vec<f64>], labels: &[i64], kind: Kind) -> (Tensor, Tensor) {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    let x = Tensor::from_slice(&flat)
        .view([rows.len() as i64, rows[0].len() as i64])
        .to_kind(kind);
    (x, Tensor::from_slice(labels))
}

fn value(out: &LossOutput) -> f64 {
    out.loss.double_value(&[])
}

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * (1.0 + want.abs()),
        "{what}: got {got}, want {want}"
    );
}

/// Runs `f` on the batch in f64 and f32 and checks both against the reference.
fn check(
    rows: &[Vec<f64>],
    labels: &[i64],
    want: (f64, f64),
    what: &str,
    f: impl Fn(&Tensor, &Tensor) -> LossOutput,
) {
    let (x, y) = tensors(rows, labels, Kind::Double);
    let out = f(&x, &y);
    assert_close(value(&out), want.0, 1e-9, what);
    assert_close(out.active_fraction, want.1, 1e-12, what);
    let (x, y) = tensors(rows, labels, Kind::Float);
    assert_close(value(&f(&x, &y)), want.0, 1e-4, what);
}

#[test]
fn semi_hard_matches_reference_on_random_batches() {
    let mut fallbacks = 0;
    for seed in SEEDS {
        let (x, y) = random_batch(seed, 5, 4, 6, 1.0);
        let x = normalized(x);
        for margin in [Margin::Value(0.2), Margin::Value(1.0), Margin::Soft] {
            let m = match margin {
                Margin::Value(m) => Some(m),
                Margin::Soft => None,
            };
            let (loss, active, fb) = r::semi_hard(&x, &y, m);
            fallbacks += fb;
            check(
                &x,
                &y,
                (loss, active),
                &format!("semi-hard seed {seed} {margin:?}"),
                |e, l| semi_hard_triplet(e, l, margin).unwrap(),
            );
        }
    }
    assert!(
        fallbacks > 0,
        "random batches never exercised the easiest-negative fallback"
    );
}

#[test]
fn semi_hard_fallback_to_easiest_negative() {
    // Positives far apart, every negative closer than the positive: pure fallback case.
    let x = vec![vec![0.0], vec![10.0], vec![1.0], vec![2.0]];
    let y = vec![0, 0, 1, 1];
    let (loss, _, fallbacks) = r::semi_hard(&x, &y, Some(0.2));
    assert!(fallbacks >= 2);
    // (0,10): D²=100, negatives 1 and 4 → easiest 4: 100 − 4 + 0.2 = 96.2
    // (10,0): D²=100, negatives 81, 64 → none farther → easiest 81: 19.2
    // (1,2): D²=1, negatives 1 (to 0, not > 1) and 81 → 81: 0
    // (2,1): D²=1, negatives 4 and 64 → 4: 0
    let want = (96.2 + 19.2) / 4.0;
    assert_close(loss, want, 1e-12, "reference");
    let (xt, yt) = tensors(&x, &y, Kind::Double);
    assert_close(
        value(&semi_hard_triplet(&xt, &yt, Margin::Value(0.2)).unwrap()),
        want,
        1e-12,
        "semi-hard",
    );
}

#[test]
fn hand_computed_triplet_cases() {
    let x = vec![vec![0.0], vec![1.0], vec![3.0], vec![6.0]];
    let y = vec![0, 0, 1, 1];
    let (xt, yt) = tensors(&x, &y, Kind::Double);
    // Semi-hard, squared distances, m = 0.2: only (2,3) is non-zero: its negatives are at 9 and
    // 4, none strictly farther than D²=9, so the easiest (9) is used: 9 − 9 + 0.2.
    let out = semi_hard_triplet(&xt, &yt, Margin::Value(0.2)).unwrap();
    assert_close(value(&out), 0.2 / 4.0, 1e-12, "semi-hard hand case");
    assert_close(out.active_fraction, 0.25, 0.0, "semi-hard active");
    // Batch-hard, m = 1, on 0, 1 | 3.5, 6 (away from the hinge's kink): anchors 0, 1, 3 give 0
    // (1 − 3.5 + 1, 1 − 2.5 + 1, 2.5 − 5 + 1); anchor 2: d⁺ = 2.5, d⁻ = 2.5 → 1.
    let x2 = vec![vec![0.0], vec![1.0], vec![3.5], vec![6.0]];
    let (xt2, _) = tensors(&x2, &y, Kind::Double);
    let out = hard_triplet(&xt2, &yt, Margin::Value(1.0)).unwrap();
    assert_close(value(&out), 0.25, 1e-9, "batch-hard hand case");
    assert_close(out.active_fraction, 0.25, 0.0, "batch-hard active");
    // Mean distances: positives 1 and 2.5, negatives 3.5, 6, 2.5, 5 (each counted twice).
    assert_close(out.mean_pos_dist, 1.75, 1e-12, "mean pos");
    assert_close(out.mean_neg_dist, 4.25, 1e-12, "mean neg");
    // Lifted, m = 1: both positive pairs see the same negative sum
    // S = e^{1−3} + e^{1−6} + e^{1−2} + e^{1−5}; J₀₁ = ln S + 1, J₂₃ = ln S + 3.
    let s = (-2f64).exp() + (-5f64).exp() + (-1f64).exp() + (-4f64).exp();
    let want = ((s.ln() + 1.0).max(0.0).powi(2) + (s.ln() + 3.0).max(0.0).powi(2)) / 4.0;
    assert_close(
        value(&lifted_structure(&xt, &yt, 1.0).unwrap()),
        want,
        1e-12,
        "lifted hand case",
    );
}

#[test]
fn hand_computed_pair_cases() {
    // N-pairs, two pairs in 1-D: a = (1, 2), p = (1, −1); S = [[1, −1], [2, −2]].
    let x = vec![vec![1.0], vec![1.0], vec![2.0], vec![-1.0]];
    let y = vec![4, 4, 9, 9];
    let (xt, yt) = tensors(&x, &y, Kind::Double);
    let ce0 = -(1.0 - (1f64.exp() + (-1f64).exp()).ln());
    let ce1 = -(-2.0 - (2f64.exp() + (-2f64).exp()).ln());
    let reg = 0.25 * 0.002 * ((1.0 + 4.0) / 2.0 + (1.0 + 1.0) / 2.0);
    let out = npairs(&xt, &yt, 0.002).unwrap();
    assert_close(
        value(&out),
        (ce0 + ce1) / 2.0 + reg,
        1e-12,
        "npairs hand case",
    );
    assert_close(out.active_fraction, 0.5, 0.0, "npairs violations");
    // Angular, α = 45° (t = 1): S_ii = 4·a_i·p_i, S_ij = 4·(a_i + p_i)·p_j.
    // S = [[4, 4·2·(−1)], [4·1·1, 4·2·(−1)]] = [[4, −8], [4, −8]].
    let ce0 = -(4.0 - (4f64.exp() + (-8f64).exp()).ln());
    let ce1 = -(-8.0 - (4f64.exp() + (-8f64).exp()).ln());
    let out = angular(&xt, &yt, 45.0, 0.002).unwrap();
    assert_close(
        value(&out),
        (ce0 + ce1) / 2.0 + reg,
        1e-12,
        "angular hand case",
    );
    // Contrastive: class A at 0, 0, 0, 0 and class B at 1, 1, 1, 3 (rows 4..7).
    let x: Vec<Vec<f64>> = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 3.0]
        .iter()
        .map(|&v| vec![v])
        .collect();
    let y = vec![0, 0, 0, 0, 1, 1, 1, 1];
    let (xt, yt) = tensors(&x, &y, Kind::Double);
    // Pairs (0,1) pos d²=1e-5; (4,3) neg d=√(1+1e-5); (2,5) neg same; (6,7) pos d² = 4 + 1e-5.
    let dn = (1.0f64 + 1e-5).sqrt();
    let want = (1e-5 + 2.0 * (2.0 - dn).max(0.0).powi(2) + 4.0 + 1e-5) / 4.0;
    let out = contrastive(&xt, &yt, 2.0).unwrap();
    assert_close(value(&out), want, 1e-12, "contrastive hand case");
    assert_eq!(
        contrastive_pair_rows(16)[4..],
        [(8, 9), (12, 11), (10, 13), (14, 15)]
    );
}

#[test]
fn contrastive_pairs_follow_the_seed_layout() {
    // On a P×K = 4 batch the label-derived pair labels are the seed's fixed [1, 0, 0, 1].
    let labels: Vec<i64> = [3, 3, 3, 3, 8, 8, 8, 8].to_vec();
    let got: Vec<bool> = contrastive_pair_rows(8)
        .iter()
        .map(|&(i, j)| labels[i as usize] == labels[j as usize])
        .collect();
    assert_eq!(got, [true, false, false, true]);
}

#[test]
fn batch_hard_lifted_and_pairs_match_reference_on_random_batches() {
    for seed in SEEDS {
        let (x, y) = random_batch(seed, 6, 3, 5, 1.5);
        for margin in [Margin::Value(1.0), Margin::Value(0.1), Margin::Soft] {
            let m = match margin {
                Margin::Value(m) => Some(m),
                Margin::Soft => None,
            };
            check(
                &x,
                &y,
                r::batch_hard(&x, &y, m),
                &format!("batch-hard {seed} {margin:?}"),
                |e, l| hard_triplet(e, l, margin).unwrap(),
            );
        }
        for margin in [1.0, 0.3] {
            check(
                &x,
                &y,
                r::lifted(&x, &y, margin),
                &format!("lifted {seed}"),
                |e, l| lifted_structure(e, l, margin).unwrap(),
            );
        }
        let (x2, y2) = pk_batch(seed, 6, 2, 5, 1.0);
        check(
            &x2,
            &y2,
            r::npairs(&x2, &y2, 0.002),
            &format!("npairs {seed}"),
            |e, l| npairs(e, l, 0.002).unwrap(),
        );
        let x2n = normalized(x2.clone());
        for alpha in [45.0, 30.0] {
            check(
                &x2n,
                &y2,
                r::angular(&x2n, &y2, alpha, 0.002),
                &format!("angular {seed}"),
                |e, l| angular(e, l, alpha, 0.002).unwrap(),
            );
        }
        let (x4, y4) = pk_batch(seed, 4, 4, 5, 0.5);
        let x4 = normalized(x4);
        check(
            &x4,
            &y4,
            r::contrastive(&x4, &y4, 1.0),
            &format!("contrastive {seed}"),
            |e, l| contrastive(e, l, 1.0).unwrap(),
        );
    }
}

#[test]
fn lifted_is_stable_for_large_distances() {
    // Distances of ~1000 underflow a naive exp(m − D); the stabilised form stays finite.
    let (x, y) = random_batch(3, 4, 3, 4, 500.0);
    let (xt, yt) = tensors(&x, &y, Kind::Float);
    let out = lifted_structure(&xt, &yt, 1.0).unwrap();
    assert!(value(&out).is_finite());
    let (xd, yd) = tensors(&x, &y, Kind::Double);
    let want = value(&lifted_structure(&xd, &yd, 1.0).unwrap());
    assert_close(
        value(&out),
        want,
        1e-4,
        "lifted f32 vs f64 at large distances",
    );
}

#[test]
fn margin_loss_matches_reference_with_all_pairs() {
    for seed in SEEDS {
        let (x, y) = random_batch(seed, 5, 3, 6, 1.0);
        let x = normalized(x);
        // Per-class β needs labels 0..C: remap the class ids.
        let mut ids: Vec<i64> = y.clone();
        ids.sort();
        ids.dedup();
        let y: Vec<i64> = y
            .iter()
            .map(|l| ids.binary_search(l).unwrap_or(0) as i64)
            .collect();
        let per_class: Vec<f64> = (0..ids.len()).map(|c| 0.9 + 0.15 * c as f64).collect();
        for (beta, scope) in [
            (vec![1.2], BetaScope::Global),
            (per_class, BetaScope::PerClass),
        ] {
            let cfg = MarginLossConfig {
                beta_scope: scope,
                num_classes: Some(beta.len()),
                nu: 0.01,
                sampling: NegativeSampling::All,
                ..MarginLossConfig::default()
            };
            let want = r::margin_all_pairs(&x, &y, &beta, cfg.alpha, cfg.nu);
            let beta_t = Tensor::from_slice(&beta);
            check(&x, &y, want, &format!("margin {seed} {scope:?}"), |e, l| {
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                margin_loss(e, l, &beta_t, &cfg, &mut rng).unwrap()
            });
        }
    }
}

#[test]
fn distance_weighted_sampling_draws_valid_negatives_reproducibly() {
    let (x, y) = pk_batch(11, 6, 4, 16, 1.0);
    let x = normalized(x);
    let (xt, _) = tensors(&x, &y, Kind::Float);
    let draw = |stream: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        rng.set_stream(stream);
        margin::distance_weighted_negatives(&xt, &y, 0.5, 1.4, &mut rng).unwrap()
    };
    let first = draw(3);
    assert_eq!(
        first,
        draw(3),
        "same (seed, step) must draw the same negatives"
    );
    assert_ne!(first, draw(4), "different steps should draw differently");
    assert_eq!(first.len(), 24 * 3, "one negative per positive pair");
    for &(a, n) in &first {
        let (a, n) = (a as usize, n as usize);
        assert_ne!(y[a], y[n], "drew a positive as negative");
        // Negatives at distance ≥ 1.4 are only drawn when the anchor has no closer negative.
        let d = r::sq_dist(&x[a], &x[n]).sqrt();
        let has_close =
            (0..x.len()).any(|j| y[j] != y[a] && r::sq_dist(&x[a], &x[j]).sqrt().max(0.5) < 1.4);
        assert!(
            d.max(0.5) < 1.4 || !has_close,
            "drew an ineligible negative at {d}"
        );
    }
}

#[test]
fn margin_beta_is_trainable_through_the_loss_module() {
    let vs = nn::VarStore::new(Device::Cpu);
    let loss = Loss::Margin(MarginLossConfig::default());
    let module = LossModule::new(&loss, &(vs.root() / "loss"), 9).unwrap();
    assert_eq!(vs.trainable_variables().len(), 1);
    let (x, y) = pk_batch(2, 4, 3, 8, 1.0);
    let (xt, yt) = tensors(&normalized(x), &y, Kind::Float);
    let out = module.forward(&xt, &yt, 0).unwrap();
    out.loss.backward();
    let beta = module.beta().unwrap();
    assert_eq!(beta.double_value(&[0]), 1.2_f32 as f64);
    let grad = beta.grad();
    assert!(grad.defined() && grad.abs().sum(Kind::Double).double_value(&[]) > 0.0);
    let frozen = Loss::Margin(MarginLossConfig {
        learn_beta: false,
        ..MarginLossConfig::default()
    });
    let vs2 = nn::VarStore::new(Device::Cpu);
    LossModule::new(&frozen, &(vs2.root() / "loss"), 9).unwrap();
    assert!(vs2.trainable_variables().is_empty());
    assert_eq!(vs2.variables().len(), 1);
}

fn all_losses() -> Vec<Loss> {
    vec![
        Loss::SemiHardTriplet {
            margin: Margin::Value(0.2),
        },
        Loss::SemiHardTriplet {
            margin: Margin::Soft,
        },
        Loss::HardTriplet {
            margin: Margin::Value(1.0),
        },
        Loss::HardTriplet {
            margin: Margin::Soft,
        },
        Loss::LiftedStructure { margin: 1.0 },
        Loss::Npairs { lambda: 0.002 },
        Loss::Angular {
            alpha_degrees: 45.0,
            lambda: 0.002,
        },
        Loss::Contrastive { margin: 1.0 },
        Loss::Margin(MarginLossConfig::default()),
        Loss::Margin(MarginLossConfig {
            sampling: NegativeSampling::All,
            ..MarginLossConfig::default()
        }),
    ]
}

#[test]
fn gradients_stay_finite_when_embeddings_coincide() {
    for loss in all_losses() {
        // 16 rows in the P×K = 4 layout (valid for every loss); rows 0 and 1 (same class) and
        // rows 2 and 4 (different classes) coincide, and the K = 2 pairs (0,1) coincide too.
        let (mut x, y) = pk_batch(5, 4, 4, 6, 1.0);
        x[1] = x[0].clone();
        x[4] = x[2].clone();
        let x = normalized(x);
        let (xt, yt) = tensors(&x, &y, Kind::Float);
        let xt = xt.set_requires_grad(true);
        let vs = nn::VarStore::new(Device::Cpu);
        let module = LossModule::new(&loss, &vs.root(), 1).unwrap();
        let labels = if loss.required_samples_per_class() == Some(2) {
            // K = 2 layout: rows 2i, 2i+1 share a label.
            Tensor::from_slice(&(0..16).map(|i| i / 2).collect::<Vec<i64>>())
        } else {
            yt
        };
        let out = module.forward(&xt, &labels, 0).unwrap();
        assert!(value(&out).is_finite(), "{}: loss not finite", loss.name());
        out.loss.backward();
        let grad = xt.grad();
        assert!(grad.defined(), "{}: no gradient", loss.name());
        let finite = grad.isfinite().all().int64_value(&[]) == 1;
        assert!(finite, "{}: non-finite gradient", loss.name());
    }
}

#[test]
fn batch_hard_on_collapsed_embeddings_gives_the_margin() {
    let x = Tensor::ones([12, 8], (Kind::Float, Device::Cpu)) * 0.3;
    let y = Tensor::from_slice(&(0..12).map(|i| i / 3).collect::<Vec<i64>>());
    let out = hard_triplet(&x, &y, Margin::Value(1.0)).unwrap();
    assert_close(value(&out), 1.0, 1e-6, "hard margin");
    assert_close(out.active_fraction, 1.0, 0.0, "all anchors active");
    let out = hard_triplet(&x, &y, Margin::Soft).unwrap();
    assert_close(value(&out), std::f64::consts::LN_2, 1e-6, "soft margin");
    assert!(out.mean_pos_dist.abs() < 1e-9 && out.mean_neg_dist.abs() < 1e-9);
}

#[test]
fn bad_batches_are_refused() {
    let x = Tensor::zeros([6, 4], (Kind::Float, Device::Cpu));
    let one_class = Tensor::from_slice(&[1i64; 6]);
    let singletons = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]);
    assert!(semi_hard_triplet(&x, &one_class, Margin::Value(0.2)).is_err());
    assert!(lifted_structure(&x, &singletons, 1.0).is_err());
    assert!(hard_triplet(
        &x,
        &Tensor::from_slice(&[0i32, 0, 1, 1, 2, 2]),
        Margin::Soft
    )
    .is_err());
    assert!(npairs(&x, &Tensor::from_slice(&[0i64, 1, 1, 1, 2, 2]), 0.002).is_err());
    assert!(contrastive(&x, &Tensor::from_slice(&[0i64, 0, 0, 0, 1, 1]), 1.0).is_err());
    assert!(hard_triplet(&x.view([6, 2, 2]), &singletons, Margin::Soft).is_err());
}

#[test]
fn loss_settings_parse_with_the_seed_defaults() {
    let parse = |s: &str| serde_json::from_str::<Loss>(s);
    assert_eq!(
        parse(r#"{"name":"semi_hard_triplet"}"#).unwrap(),
        Loss::SemiHardTriplet {
            margin: Margin::Value(0.2)
        }
    );
    assert_eq!(
        parse(r#"{"name":"hard_triplet","margin":"soft"}"#).unwrap(),
        Loss::HardTriplet {
            margin: Margin::Soft
        }
    );
    assert_eq!(
        parse(r#"{"name":"hard_triplet"}"#).unwrap(),
        Loss::HardTriplet {
            margin: Margin::Value(1.0)
        }
    );
    assert_eq!(
        parse(r#"{"name":"lifted_structure"}"#).unwrap(),
        Loss::LiftedStructure { margin: 1.0 }
    );
    assert_eq!(
        parse(r#"{"name":"npairs"}"#).unwrap(),
        Loss::Npairs { lambda: 0.002 }
    );
    assert_eq!(
        parse(r#"{"name":"angular"}"#).unwrap(),
        Loss::Angular {
            alpha_degrees: 45.0,
            lambda: 0.002
        }
    );
    assert_eq!(
        parse(r#"{"name":"contrastive"}"#).unwrap(),
        Loss::Contrastive { margin: 1.0 }
    );
    let margin = parse(r#"{"name":"margin","beta_scope":"per_class","num_classes":100}"#).unwrap();
    let Loss::Margin(cfg) = &margin else {
        panic!("not a margin loss")
    };
    assert_eq!((cfg.alpha, cfg.beta_init, cfg.learn_beta), (0.2, 1.2, true));
    assert_eq!(
        cfg.sampling,
        NegativeSampling::DistanceWeighted {
            cutoff: 0.5,
            nonzero_loss_cutoff: 1.4
        }
    );
    assert!(parse(r#"{"name":"hard_triplet","margn":1.0}"#).is_err());
    assert!(parse(r#"{"name":"margin","betta":1.0}"#).is_err());
    assert!(parse(r#"{"name":"hard_triplet","margin":"hard"}"#).is_err());
    assert!(parse(r#"{"name":"triplet"}"#).is_err());
    for loss in all_losses() {
        let text = serde_json::to_string(&loss).unwrap();
        assert_eq!(parse(&text).unwrap(), loss, "round trip of {text}");
        assert_eq!(
            Loss::with_defaults(loss.name()).unwrap().name(),
            loss.name()
        );
    }
    assert!(Loss::Margin(MarginLossConfig {
        beta_scope: BetaScope::PerClass,
        ..MarginLossConfig::default()
    })
    .validate()
    .is_err());
    assert!(Loss::Angular {
        alpha_degrees: 90.0,
        lambda: 0.0
    }
    .validate()
    .is_err());
    assert!(Loss::HardTriplet {
        margin: Margin::Value(f64::NAN)
    }
    .validate()
    .is_err());
}
