//! The training worker's library: everything that needs libtorch (tch), and nothing else.
//!
//! [`train`] holds the networks, losses, optimisers and the [`train::Trainer`]; [`training`]
//! and [`embedding`] are the bodies of the train and embed stages, which `dml` runs in the
//! `dml-torch` executable ([`worker::main`]) so that `dml` itself never loads libtorch. The
//! settings these read are plain data in `dml_jobspec` (`train_config`, `jobs::TrainJob`,
//! `jobs::EmbedJob`); [`use_model`] embeds image files and exports the network for `dml embed`,
//! `dml search` and `dml export`.
#![deny(missing_docs)]
pub mod context;
pub mod embedding;
pub mod loader;
pub mod train;
pub mod training;
pub mod use_model;
pub mod validator;
pub mod worker;
