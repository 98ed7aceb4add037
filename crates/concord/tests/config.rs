//! `concord serve --print-config`: where each setting comes from, and how a bad file fails.

mod common;

use common::{concord, run};

fn printed(output: &std::process::Output) -> toml::Table {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap()
}

#[test]
fn flags_beat_environment_beats_file_beats_defaults() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("concord.toml");
    std::fs::write(
        &file,
        r#"
        bind = "127.0.0.1:1001"
        max_open_models = 11
        max_frame_bytes = 12345
        data_dir = "store"

        [collections.notes]
        world = { read = true }
        users = { alice = { read = true, write = true, manage = true } }
        world_create = false
        creators = ["alice"]
        "#,
    )?;

    // The file alone, over the defaults.
    let config = printed(&run(concord().args(["serve", "--print-config", "--config"]).arg(&file))?);
    assert_eq!(config["bind"].as_str(), Some("127.0.0.1:1001"));
    assert_eq!(config["max_open_models"].as_integer(), Some(11));
    assert_eq!(config["messages_per_second"].as_integer(), Some(2000));
    // Relative paths in the file are relative to it.
    let store = dir.path().join("store");
    assert_eq!(config["data_dir"].as_str(), store.to_str());
    let notes = &config["collections"]["notes"];
    assert_eq!(notes["world"]["read"].as_bool(), Some(true));
    assert_eq!(notes["world"]["write"].as_bool(), Some(false));
    assert_eq!(notes["users"]["alice"]["manage"].as_bool(), Some(true));
    assert_eq!(notes["world_create"].as_bool(), Some(false));

    // The environment over the file; the flag over both.
    let output = run(concord()
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .env("CONCORD_BIND", "127.0.0.1:2002")
        .env("CONCORD_MAX_OPEN_MODELS", "22")
        .env("CONCORD_ALLOW_ANONYMOUS", "true")
        .args(["--bind", "127.0.0.1:3003", "--allow-anonymous=false"]))?;
    let config = printed(&output);
    assert_eq!(config["bind"].as_str(), Some("127.0.0.1:3003"));
    assert_eq!(config["max_open_models"].as_integer(), Some(22));
    assert_eq!(config["max_frame_bytes"].as_integer(), Some(12345));
    assert_eq!(config["allow_anonymous"].as_bool(), Some(false));

    // The configuration file can come from the environment too, and a bare flag is true.
    let output = run(concord()
        .args(["serve", "--print-config", "--allow-anonymous"])
        .env("CONCORD_CONFIG", &file))?;
    let config = printed(&output);
    assert_eq!(config["max_open_models"].as_integer(), Some(11));
    assert_eq!(config["allow_anonymous"].as_bool(), Some(true));

    // Nothing at all: the defaults.
    let config = printed(&run(concord().args(["serve", "--print-config"]))?);
    assert_eq!(config["bind"].as_str(), Some("127.0.0.1:7700"));
    assert_eq!(config["data_dir"].as_str(), Some("./concord-data"));
    assert_eq!(config["log"].as_str(), Some("info"));
    Ok(())
}

#[test]
fn a_bad_configuration_fails_clearly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cases: [(&str, &str); 5] = [
        ("bind = 5\n", "expected socket address"),
        ("max_open_modles = 3\n", "unknown field `max_open_modles`"),
        ("[collections.notes]\nworld = { fly = true }\n", "unknown field `fly`"),
        ("bind = \"127.0.0.1:1\"\nbind = \"127.0.0.1:2\"\n", "duplicate key"),
        ("jwt_secret_file = \"a\"\njwt_rs256_public_key = \"b\"\n", "configure one of them"),
    ];
    for (text, expected) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text)?;
        let data_dir = dir.path().join("data");
        // Starting for real fails the same way, before touching the data directory.
        for print in [true, false] {
            let mut command = concord();
            command.args(["serve", "--bind", "127.0.0.1:0", "--config"]).arg(&file);
            command.arg("--data-dir").arg(&data_dir);
            if print {
                command.arg("--print-config");
            }
            let output = run(&mut command)?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{text}: {stderr}");
            assert!(
                stderr.contains("bad config file") || stderr.contains("configure one"),
                "{stderr}"
            );
            assert!(stderr.contains(expected), "{text}: expected {expected:?} in {stderr}");
            assert!(output.stdout.is_empty());
            assert!(!data_dir.exists());
        }
    }

    let missing = run(concord().args(["serve", "--config", "/nonexistent/concord.toml"]))?;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read the config file"));

    let bad_flag = run(concord().args(["serve", "--print-config", "--max-open-models", "many"]))?;
    assert!(!bad_flag.status.success());
    let bad_env = run(concord().args(["serve", "--print-config"]).env("CONCORD_BIND", "nowhere"))?;
    assert!(!bad_env.status.success());
    assert!(String::from_utf8_lossy(&bad_env.stderr).contains("--bind"));
    Ok(())
}

/// A store URL's password is never printed: `--print-config` masks it, wherever the URL
/// came from, and keeps the rest of the URL and the retry time.
#[test]
fn the_printed_configuration_masks_the_store_password() -> anyhow::Result<()> {
    let url = "postgres://concord:hunter2@db.internal:5432/concord?password=hunter2";
    let from_flag = run(concord().args(["serve", "--print-config", "--store", url]))?;
    let from_env = run(concord()
        .args(["serve", "--print-config", "--store-retry-secs", "5"])
        .env("CONCORD_STORE", url))?;
    for output in [&from_flag, &from_env] {
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(!text.contains("hunter2"), "{text}");
        let config = printed(output);
        assert_eq!(
            config["store"].as_str(),
            Some("postgres://concord:***@db.internal:5432/concord?password=***")
        );
    }
    assert_eq!(printed(&from_flag)["store_retry_secs"].as_integer(), Some(30));
    assert_eq!(printed(&from_env)["store_retry_secs"].as_integer(), Some(5));
    Ok(())
}

#[test]
fn cluster_settings_come_from_flags_environment_and_file_and_are_checked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("concord.toml");
    std::fs::write(
        &file,
        "store = \"postgres://concord@db/concord\"\ncluster = true\nnode_name = \"n1\"\n",
    )?;
    let from_file =
        printed(&run(concord().args(["serve", "--print-config", "--config"]).arg(&file))?);
    assert_eq!(from_file["cluster"].as_bool(), Some(true));
    assert_eq!(from_file["node_name"].as_str(), Some("n1"));
    assert_eq!(from_file["lease_millis"].as_integer(), Some(4000));
    let over = printed(&run(concord()
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .env("CONCORD_LEASE_MILLIS", "2000")
        .args(["--node-url", "ws://node1.internal:7701"]))?);
    assert_eq!(over["lease_millis"].as_integer(), Some(2000));
    assert_eq!(over["node_url"].as_str(), Some("ws://node1.internal:7701"));
    // Without cluster mode the single-node server prints none of it but the default.
    let single = printed(&run(concord().args(["serve", "--print-config"]))?);
    assert_eq!(single["cluster"].as_bool(), Some(false));
    assert!(single.get("node_url").is_none());

    let refused = |args: &[&str]| -> anyhow::Result<String> {
        let output = run(concord().args(["serve", "--print-config"]).args(args))?;
        assert!(!output.status.success(), "{args:?} was accepted");
        Ok(String::from_utf8_lossy(&output.stderr).into_owned())
    };
    assert!(refused(&["--cluster"])?.contains("PostgreSQL store"));
    let store = ["--store", "postgres://concord@db/concord"];
    assert!(refused(&[&store[..], &["--node-name", "n1"]].concat())?.contains("cluster"));
    let zero = refused(&[&store[..], &["--cluster", "--lease-millis", "0"]].concat())?;
    assert!(zero.contains("lease"), "{zero}");
    Ok(())
}

/// The async workers: by default one per core less the embedded store's writer, at least
/// one (the defaults by store: the unit tests of `config.rs`); `--workers` sets them, and
/// the server runs that many. The printout names them only when set: the default depends
/// on the machine, and a printout copied to another one must not pin this one's.
#[test]
fn the_async_workers_default_to_the_cores_the_store_writer_leaves_and_can_be_set()
-> anyhow::Result<()> {
    let cores = std::thread::available_parallelism()?.get();
    let embedded = printed(&run(concord().args(["serve", "--print-config"]))?);
    assert!(embedded.get("workers").is_none(), "{embedded}");
    let set =
        printed(&run(concord().args(["serve", "--print-config"]).env("CONCORD_WORKERS", "3"))?);
    assert_eq!(set["workers"].as_integer(), Some(3));

    let zero = run(concord().args(["serve", "--print-config", "--workers", "0"]))?;
    assert_eq!(zero.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("workers must be at least 1"));

    let default = cores.saturating_sub(1).max(1);
    for (flags, workers) in [(vec![], default), (vec!["--workers", "3"], 3)] {
        let dir = tempfile::tempdir()?;
        let mut server = common::serve(dir.path(), &flags)?;
        let ready = server.wait_for_log("concord ready")?;
        server.stop()?;
        assert!(ready.contains(&format!("workers={workers}")), "{ready}");
    }
    Ok(())
}
