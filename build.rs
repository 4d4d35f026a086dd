//! Gives the shared library its soname when the installer asks for one
//! (`make install` builds with `MQS_SONAME=libmqstore.so.<abi>`). Builds
//! for the tree itself leave it out: programs linked against
//! `target/*/libmqstore.so` then load that file by its own name, with no
//! versioned symlink to create next to it.
fn main() {
    println!("cargo:rerun-if-env-changed=MQS_SONAME");
    if let Ok(soname) = std::env::var("MQS_SONAME") {
        if !soname.is_empty() {
            println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
        }
    }
}
