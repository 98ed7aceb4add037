//! `concord serve`'s settings for presence and activities, end to end: flags and the
//! file's `[activities.<type>]` tables change what a real server lets clients do.

mod common;

use common::{concord, connect, run, serve, token};
use concord_protocol::{
    ActivityId, ActivityRequest, ClientRequest, ErrorCode, PresenceRequest, ServerResponse, UserId,
};

fn activity(kind: &str, id: &str) -> ActivityId {
    ActivityId { kind: kind.into(), id: id.into() }
}

fn join(kind: &str, id: &str) -> ClientRequest {
    ClientRequest::Activity(ActivityRequest::Join {
        activity: activity(kind, id),
        state: Default::default(),
    })
}

#[test]
fn the_ephemeral_limits_come_from_flags_and_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("concord.toml");
    std::fs::write(
        &file,
        r#"
        max_followed_users = 9
        activity_permissions = "join"

        [activities.meeting]
        world = { join = true, set_state = true }
        users = { alice = { join = true, set_state = true, manage = true } }
        "#,
    )?;
    let output = run(concord()
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .args(["--silence-timeout-secs", "7", "--max-presence-state-bytes", "100"])
        .args(["--max-activities-joined", "3", "--max-activity-state-bytes", "50"])
        .args(["--identity-admins", "root,ops"]))?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let config: toml::Table = toml::from_str(&String::from_utf8_lossy(&output.stdout))?;
    assert_eq!(config["silence_timeout_secs"].as_integer(), Some(7));
    assert_eq!(config["max_presence_state_bytes"].as_integer(), Some(100));
    assert_eq!(config["max_followed_users"].as_integer(), Some(9));
    assert_eq!(config["max_activities_joined"].as_integer(), Some(3));
    assert_eq!(config["max_activity_state_bytes"].as_integer(), Some(50));
    assert_eq!(config["activity_permissions"].as_str(), Some("join"));
    let admins: Vec<&str> =
        config["identity_admins"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(admins, ["root", "ops"]);
    let meeting = &config["activities"]["meeting"];
    assert_eq!(meeting["world"]["set_state"].as_bool(), Some(true));
    assert_eq!(meeting["users"]["alice"]["manage"].as_bool(), Some(true));

    // The defaults, printed.
    let output = run(concord().args(["serve", "--print-config"]))?;
    let config: toml::Table = toml::from_str(&String::from_utf8_lossy(&output.stdout))?;
    assert_eq!(config["silence_timeout_secs"].as_integer(), Some(60));
    assert_eq!(config["activity_permissions"].as_str(), Some("join,set_state"));

    // Bad values fail clearly.
    for (args, expected) in [
        (vec!["--activity-permissions", "join,fly"], "\"fly\" is none of"),
        (vec!["--silence-timeout-secs", "0"], "silence_timeout"),
    ] {
        let output = run(concord().args(["serve", "--print-config"]).args(args))?;
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
    }
    std::fs::write(&file, "[activities.meeting]\nworld = { fly = true }\n")?;
    let output = run(concord().args(["serve", "--print-config", "--config"]).arg(&file))?;
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field `fly`"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_enforces_the_configured_activity_and_presence_limits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("concord.toml");
    std::fs::write(&file, "[activities.meeting]\nworld = { join = true, set_state = true }\n")?;
    let config = file.to_str().unwrap();
    let mut server = serve(
        dir.path(),
        &[
            "--config",
            config,
            "--activity-permissions",
            "none",
            "--max-activities-joined",
            "1",
            "--max-followed-users",
            "1",
        ],
    )?;
    let url = server.url("acme", "main");
    let mut alice = connect(&url, &token(dir.path(), "alice")?).await?;

    // A type without a table takes `--activity-permissions`: nobody may join.
    let refused = alice.request(join("page", "12")).await?;
    assert_eq!(refused.unwrap_err().code, ErrorCode::PERMISSION_DENIED);
    // The file's `[activities.meeting]` lets everyone join, once at a time.
    let joined = alice.request(join("meeting", "a")).await?;
    assert!(matches!(joined, Ok(ServerResponse::ActivityJoined { .. })), "{joined:?}");
    let second = alice.request(join("meeting", "b")).await?;
    assert_eq!(second.unwrap_err().code, ErrorCode::OVERLOADED);

    // One followed user at most.
    let follow = |users: &[&str]| {
        ClientRequest::Presence(PresenceRequest::Subscribe {
            users: users.iter().map(|u| UserId((*u).into())).collect(),
        })
    };
    assert!(alice.request(follow(&["bob"])).await?.is_ok());
    let more = alice.request(follow(&["carol"])).await?;
    assert_eq!(more.unwrap_err().code, ErrorCode::OVERLOADED);
    server.stop()?;
    Ok(())
}
