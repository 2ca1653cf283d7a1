include!("build-support/torch_link.rs");

fn main() {
    // Only the training worker links libtorch; `dml` itself never loads it.
    link_torch(Some("dml-torch"));
}
