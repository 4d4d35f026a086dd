//! Arbitrary text as storage.toml and as shard options: a clear error or a
//! configuration, never a panic; an accepted configuration's shard options
//! survive the round trip through the form the engines persist.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqstore::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml_str(text) {
        let options = config.shard_defaults.clone();
        let again = config
            .shard_options(Some(&options.to_toml()))
            .expect("persisted options parse");
        assert_eq!(again, options);
    }
    let _ = Config::default().shard_options(Some(text));
});
