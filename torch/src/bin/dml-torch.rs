//! `dml-torch`: the training worker `dml` starts for the train and embed stages (the one
//! executable that links libtorch). `dml-torch probe` prints the CUDA devices it sees;
//! `dml-torch run-stage` reads a stage request on stdin (see `dml_jobspec::protocol`).
fn main() {
    std::process::exit(dml_torch::worker::main());
}
