//! Each service's request for the same alerts, checked against that service's documented
//! format and limits, and how answers are read.

use super::reply::*;
use super::*;
use crate::alerts::outbox::Delivery;
use crate::alerts::rules::{AlertKey, Facts};
use crate::alerts::testing::{crash_notice, t};
use respawn_common::status::{ExitStatus, LogLine, Stream};

fn crash(process: &str) -> Notice {
    Notice {
        facts: Facts {
            exit: Some(ExitStatus::Code { code: 1 }),
            restarts: Some(2),
            failures: 1,
            log_tail: vec![
                LogLine {
                    at: t(0),
                    stream: Stream::Stdout,
                    text: "listening on :4567".into(),
                },
                LogLine {
                    at: t(0),
                    stream: Stream::Stderr,
                    text: "fatal: <GPIO 17> busy & gone".into(),
                },
            ],
            next_start: Some(t(4)),
            ..Facts::default()
        },
        ..crash_notice(process)
    }
}

fn back_online() -> Notice {
    Notice {
        key: AlertKey {
            agent: "garage-pi".into(),
            process: None,
            kind: AlertKind::Offline,
        },
        phase: Phase::Resolved,
        at: t(312),
        since: t(0),
        facts: Facts {
            resolution: Some("back online".into()),
            ..Facts::default()
        },
    }
}

fn batch(notices: Vec<Notice>) -> Batch {
    Batch {
        id: "b0a7c0ffee".into(),
        notices,
        created: t(0),
        attempts: 0,
        told: None,
    }
}

fn body(request: &HttpRequest) -> serde_json::Value {
    assert!(request
        .headers
        .contains(&("Content-Type".into(), "application/json".into())));
    serde_json::from_slice(&request.body).expect("JSON")
}

#[test]
fn events_lost_say_how_many_and_end_as_they_are_told() {
    let lost = Notice {
        key: AlertKey {
            agent: "door-pi".into(),
            process: None,
            kind: AlertKind::EventsLost,
        },
        phase: Phase::Firing,
        at: t(60),
        since: t(60),
        facts: Facts {
            lost: Some(12),
            ..Facts::default()
        },
    };
    let slack = Channel::Slack {
        url: "https://hooks.slack.com/services/T/B/X".into(),
    };
    let json = body(&request(&slack, &batch(vec![lost.clone()])));
    assert_eq!(json["text"], "🟠 door-pi lost 12 events");
    let webhook = Channel::Webhook {
        url: "http://hooks.lan/respawn".into(),
    };
    let json = body(&request(&webhook, &batch(vec![lost])));
    let alert = &json["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "AgentEventsLost");
    assert_eq!(
        alert["endsAt"], alert["startsAt"],
        "nothing will resolve it"
    );
}

/// A firing and its reminders, all held through an outage of the chat, arrive as one firing
/// with the reminder's facts: the chat never heard of the alert, so "still" would be wrong.
#[test]
fn a_reminder_of_an_alert_the_chat_never_heard_of_is_told_as_its_firing() {
    let slack = Channel::Slack {
        url: "https://hooks.slack.com/services/T/B/X".into(),
    };
    let reminded = |restarts| Notice {
        phase: Phase::Reminder,
        facts: Facts {
            restarts: Some(restarts),
            ..crash("doorbot").facts
        },
        ..crash("doorbot")
    };
    let held = batch(vec![crash("doorbot"), reminded(7), reminded(9)]);
    let json = body(&request(&slack, &held));
    let text = serde_json::to_string(&json).unwrap_or_default();
    assert_eq!(json["text"], "🟠 door-pi/doorbot crashed: exit 1", "{text}");
    assert!(
        text.contains("restarts so far: 9"),
        "the latest facts: {text}"
    );
    assert!(!text.contains("still"), "{text}");
    assert!(!text.contains("restarts so far: 2"), "told once: {text}");
    // One the chat was told of before is reminded of as such, once.
    let json = body(&request(&slack, &batch(vec![reminded(7), reminded(9)])));
    assert_eq!(json["text"], "⏰ door-pi/doorbot is still crashing");
    let text = serde_json::to_string(&json).unwrap_or_default();
    assert!(text.contains("restarts so far: 9") && !text.contains("restarts so far: 7"));
    // A webhook gets the same: one firing alert with the latest facts, then its end.
    let webhook = Channel::Webhook {
        url: "http://hooks.lan/respawn".into(),
    };
    let resolved = Notice {
        phase: Phase::Resolved,
        ..reminded(9)
    };
    let json = body(&request(
        &webhook,
        &batch(vec![crash("doorbot"), reminded(7), reminded(9), resolved]),
    ));
    let alerts = json["alerts"].as_array().cloned().unwrap_or_default();
    let statuses: Vec<&str> = alerts.iter().filter_map(|a| a["status"].as_str()).collect();
    assert_eq!(statuses, ["firing", "resolved"], "{json}");
    let description = alerts[0]["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(description.contains("restarts so far: 9"), "{description}");
}

/// Resolved, then crashed again within one grouping window: the message says it is down.
#[test]
fn an_alert_told_twice_in_a_batch_is_told_as_it_stands_now() {
    let channel = Channel::Slack {
        url: "https://hooks.slack.com/services/T/B/X".into(),
    };
    let resolved = Notice {
        phase: Phase::Resolved,
        facts: Facts {
            resolution: Some("ran 60s".into()),
            ..Facts::default()
        },
        ..crash("doorbot")
    };
    let again = request(&channel, &batch(vec![resolved.clone(), crash("doorbot")]));
    assert_eq!(body(&again)["text"], "🟠 door-pi/doorbot crashed: exit 1");
    let back = request(&channel, &batch(vec![crash("doorbot"), resolved.clone()]));
    let text = body(&back)["text"].as_str().unwrap_or_default().to_owned();
    assert!(text.starts_with('✅') || text.starts_with('☑'), "{text}");
    // A webhook gets every notice (none lost), under a status that agrees with its summary.
    let webhook = Channel::Webhook {
        url: "http://hooks.lan/respawn".into(),
    };
    let told = |notices: Vec<Notice>| body(&request(&webhook, &batch(notices)));
    let statuses = |json: &serde_json::Value| -> Vec<(String, String)> {
        (json["alerts"].as_array().unwrap().iter())
            .map(|a| {
                let process = a["labels"]["process"].as_str().unwrap_or_default();
                let status = a["status"].as_str().unwrap_or_default();
                (process.to_owned(), status.to_owned())
            })
            .collect()
    };
    let pair = |process: &str, status: &str| (process.to_owned(), status.to_owned());
    let over = told(vec![crash("doorbot"), resolved.clone()]);
    assert_eq!(
        statuses(&over),
        [pair("doorbot", "firing"), pair("doorbot", "resolved")]
    );
    assert_eq!(over["status"], "resolved");
    let summary = over["commonAnnotations"]["summary"]
        .as_str()
        .unwrap_or_default();
    assert!(
        summary.starts_with('✅') || summary.starts_with('☑'),
        "{summary}"
    );
    let again = told(vec![resolved, crash("doorbot")]);
    assert_eq!(again["status"], "firing");
}

#[test]
fn slack_gets_mrkdwn_sections_with_the_log_and_the_fix() {
    let channel = Channel::Slack {
        url: "https://hooks.slack.com/services/T/B/X".into(),
    };
    let request = request(&channel, &batch(vec![crash("doorbot")]));
    assert_eq!(
        (request.method, request.url.as_str()),
        ("POST", "https://hooks.slack.com/services/T/B/X")
    );
    let json = body(&request);
    assert_eq!(json["text"], "🟠 door-pi/doorbot crashed: exit 1");
    assert_eq!(json["blocks"][0]["type"], "section");
    assert_eq!(json["blocks"][0]["text"]["type"], "mrkdwn");
    assert_eq!(
        json["blocks"][0]["text"]["text"],
        "🟠 *door-pi/doorbot crashed: exit 1*\nrestarts so far: 2\nnext start in 4s\nsince 2027-01-15 08:00:00 UTC\n```listening on :4567\nfatal: &lt;GPIO 17&gt; busy &amp; gone```"
    );
    assert_eq!(json["blocks"][1]["type"], "context");
    assert_eq!(
        json["blocks"][1]["elements"][0]["text"],
        "`respawnctl restart door-pi/doorbot`  ·  `respawnctl logs door-pi/doorbot`"
    );

    let many: Vec<Notice> = (0..40).map(|i| crash(&format!("p{i}"))).collect();
    let json = body(&request_for(&channel, many));
    let blocks = json["blocks"].as_array().unwrap();
    assert!(blocks.len() <= 50, "Slack takes at most 50 blocks");
    assert_eq!(blocks.last().unwrap()["text"]["text"], "…and 16 more");
    assert_eq!(json["text"], "🟠 40 updates from door-pi");
}

fn request_for(channel: &Channel, notices: Vec<Notice>) -> HttpRequest {
    request(channel, &batch(notices))
}

#[test]
fn discord_gets_coloured_embeds_within_its_limits() {
    let channel = Channel::Discord {
        url: "https://discord.com/api/webhooks/1/abc".into(),
    };
    let request = request_for(&channel, vec![back_online(), crash("doorbot")]);
    assert_eq!(
        request.url,
        "https://discord.com/api/webhooks/1/abc?wait=true"
    );
    let json = body(&request);
    assert_eq!(json["allowed_mentions"]["parse"], serde_json::json!([]));
    let embeds = json["embeds"].as_array().unwrap();
    assert_eq!(embeds.len(), 2);
    assert_eq!(
        embeds[0]["title"], "🟠 door-pi/doorbot crashed: exit 1",
        "worst first"
    );
    assert_eq!(embeds[0]["color"], 0xE0_8E_0B);
    assert!(embeds[0]["description"]
        .as_str()
        .unwrap()
        .contains("```\nlistening on :4567\nfatal: <GPIO 17> busy & gone\n```"));
    assert_eq!(embeds[0]["timestamp"], "2027-01-15T08:00:00.000Z");
    assert_eq!(
        embeds[1]["title"],
        "✅ garage-pi is back online after 5m12s"
    );
    assert_eq!(embeds[1]["color"], 0x2E_A0_43);

    let mut huge = crash("doorbot");
    huge.facts.log_tail = (0..10)
        .map(|i| LogLine {
            at: t(0),
            stream: Stream::Stderr,
            text: format!("{i}{}", "x".repeat(1000)),
        })
        .collect();
    let json = body(&request_for(
        &channel,
        (0..12).map(|_| huge.clone()).collect(),
    ));
    let embeds = json["embeds"].as_array().unwrap();
    assert_eq!(embeds.len(), 10, "at most 10 embeds");
    let total: usize = embeds
        .iter()
        .map(|e| {
            e["title"].as_str().unwrap().chars().count()
                + e["description"].as_str().unwrap().chars().count()
                + 7
        })
        .sum();
    assert!(total <= 6000, "{total} characters");
    assert!(
        embeds[9]["description"]
            .as_str()
            .unwrap()
            .ends_with("…and 2 more"),
        "{}",
        embeds[9]["description"]
    );
    // Found by a review: the log cut with the rest left its fence open, and the commands out.
    for embed in embeds {
        let description = embed["description"].as_str().unwrap();
        assert_eq!(description.matches("```").count(), 2, "{description}");
        assert!(
            description.contains("`respawnctl restart door-pi/doorbot`"),
            "{description}"
        );
    }
}

#[test]
fn telegram_gets_html_that_reads_well_on_a_phone() {
    let channel = Channel::Telegram {
        token: "123:abc".into(),
        chat_id: "-100123".into(),
        api: "https://api.telegram.org".into(),
    };
    let request = request_for(&channel, vec![crash("doorbot")]);
    assert_eq!(
        request.url,
        "https://api.telegram.org/bot123:abc/sendMessage"
    );
    let json = body(&request);
    assert_eq!(json["chat_id"], "-100123");
    assert_eq!(json["parse_mode"], "HTML");
    assert_eq!(json["link_preview_options"]["is_disabled"], true);
    assert_eq!(
        json["text"],
        "🟠 <b>door-pi/doorbot crashed: exit 1</b>\nrestarts so far: 2\nnext start in 4s\nsince 2027-01-15 08:00:00 UTC\n<pre>listening on :4567\nfatal: &lt;GPIO 17&gt; busy &amp; gone</pre>\n<code>respawnctl restart door-pi/doorbot</code>\n<code>respawnctl logs door-pi/doorbot</code>"
    );

    let mut huge = crash("doorbot");
    huge.facts.log_tail = (0..10)
        .map(|_| LogLine {
            at: t(0),
            stream: Stream::Stderr,
            text: "<".repeat(500),
        })
        .collect();
    let json = body(&request_for(
        &channel,
        (0..30).map(|_| huge.clone()).collect(),
    ));
    let text = json["text"].as_str().unwrap();
    assert!(text.chars().count() <= 4096, "{}", text.chars().count());
    assert!(text.ends_with(" more"), "{text}");
    assert_eq!(text.matches("<b>").count(), text.matches("</b>").count());

    // Found by a review: an alert too large even without its log (a spawn error naming a
    // path of thousands of characters) was sent as "…and 1 more" alone.
    let mut enormous = crash("doorbot");
    enormous.facts.exit = None;
    enormous.facts.error = Some(format!("cannot start /{}: not found", "\"<&>".repeat(2000)));
    let json = body(&request_for(&channel, vec![enormous.clone(), crash("web")]));
    let text = json["text"].as_str().unwrap();
    assert!(text.chars().count() <= 4096, "{}", text.chars().count());
    assert!(text.contains("door-pi/doorbot"), "{text}");
    assert!(text.contains("cannot start /"), "{text}");
    assert_eq!(text.matches("<b>").count(), text.matches("</b>").count());
}

#[test]
fn matrix_gets_an_idempotent_put_with_html_and_a_plain_body() {
    let channel = Channel::Matrix {
        homeserver: "https://matrix.example.org".into(),
        room: "!abc:example.org".into(),
        token: "syt_secret".into(),
    };
    let request = request_for(&channel, vec![crash("doorbot")]);
    assert_eq!(request.method, "PUT");
    assert_eq!(
        request.url,
        "https://matrix.example.org/_matrix/client/v3/rooms/%21abc%3Aexample.org/send/m.room.message/b0a7c0ffee"
    );
    assert!(request
        .headers
        .contains(&("Authorization".into(), "Bearer syt_secret".into())));
    let json = body(&request);
    assert_eq!(json["msgtype"], "m.text");
    assert_eq!(json["m.mentions"], serde_json::json!({}), "mentions nobody");
    assert_eq!(json["format"], "org.matrix.custom.html");
    assert!(json["formatted_body"]
        .as_str()
        .unwrap()
        .starts_with("<p>🟠 <b>door-pi/doorbot crashed: exit 1</b><br/>restarts so far: 2"));
    assert!(json["formatted_body"]
        .as_str()
        .unwrap()
        .contains("</p><pre><code>listening on :4567\nfatal: &lt;GPIO 17&gt; busy &amp; gone</code></pre><p><code>respawnctl restart door-pi/doorbot</code><br/>"));
    assert!(json["body"]
        .as_str()
        .unwrap()
        .contains("    fatal: <GPIO 17> busy & gone\n$ respawnctl restart door-pi/doorbot"));

    let mut huge = crash("doorbot");
    huge.facts.log_tail = (0..10)
        .map(|_| LogLine {
            at: t(0),
            stream: Stream::Stderr,
            text: "é".repeat(200),
        })
        .collect();
    let request = request_for(&channel, (0..200).map(|_| huge.clone()).collect());
    assert!(request.body.len() < 60_000, "{} bytes", request.body.len());
    assert!(body(&request)["body"].as_str().unwrap().ends_with(" more"));
}

#[test]
fn ntfy_gets_its_json_form_with_priority_and_tags() {
    let channel = Channel::Ntfy {
        url: "https://ntfy.sh/door-alerts".into(),
        token: Some("tk_x".into()),
    };
    let request = request_for(&channel, vec![crash("doorbot")]);
    assert_eq!(
        (request.method, request.url.as_str()),
        ("POST", "https://ntfy.sh/")
    );
    assert!(request
        .headers
        .contains(&("Authorization".into(), "Bearer tk_x".into())));
    let json = body(&request);
    assert_eq!(json["topic"], "door-alerts");
    assert_eq!(json["title"], "door-pi/doorbot crashed: exit 1");
    assert_eq!(json["priority"], 4);
    // The title's mark, 🟠, as every other service shows it.
    assert_eq!(
        json["tags"],
        serde_json::json!(["orange_circle", "respawn"])
    );
    assert_eq!(json["markdown"], true);
    assert!(json["message"]
        .as_str()
        .unwrap()
        .starts_with("**door-pi/doorbot crashed: exit 1**\nrestarts so far: 2"));
    let json = body(&request_for(&channel, vec![back_online()]));
    assert_eq!(json["priority"], 3);
    assert_eq!(json["tags"][0], "white_check_mark");
    // An end by hand keeps its ☑️, as the other services show it.
    let stopped = Notice {
        key: AlertKey {
            agent: "door-pi".into(),
            process: Some("flaky".into()),
            kind: AlertKind::Crashed,
        },
        facts: Facts {
            resolution: Some("stopped by request".into()),
            ..Facts::default()
        },
        ..back_online()
    };
    let json = body(&request_for(&channel, vec![stopped]));
    assert_eq!(
        (&json["priority"], &json["tags"][0]),
        (
            &serde_json::json!(3),
            &serde_json::json!("ballot_box_with_check")
        ),
        "{json}"
    );
    let mut looping = crash("doorbot");
    looping.key.kind = AlertKind::CrashLoop;
    let json = body(&request_for(&channel, vec![looping]));
    assert_eq!(
        (&json["priority"], &json["tags"][0], &json["title"]),
        (
            &serde_json::json!(5),
            &serde_json::json!("red_circle"),
            &serde_json::json!("door-pi/doorbot is in a crash loop")
        ),
    );
    let many: Vec<Notice> = (0..100).map(|i| crash(&format!("p{i}"))).collect();
    let json = body(&request_for(&channel, many));
    assert_eq!(
        json["title"], "100 updates from door-pi",
        "its mark is a tag"
    );
    assert!(json["message"].as_str().unwrap().len() <= 4096);
    assert!(json["message"].as_str().unwrap().ends_with(" more"));
    let mut wide = crash("doorbot");
    wide.facts.log_tail = (0..10)
        .map(|_| LogLine {
            at: t(0),
            stream: Stream::Stderr,
            text: "ü".repeat(200),
        })
        .collect();
    let json = body(&request_for(&channel, vec![wide]));
    let message = json["message"].as_str().unwrap();
    assert!(message.len() <= 4096, "{}", message.len());
    assert!(
        message.starts_with("**door-pi/doorbot crashed"),
        "never empty"
    );
}

#[test]
fn webhooks_get_alertmanagers_format() {
    let channel = Channel::Webhook {
        url: "http://hooks.lan/respawn".into(),
    };
    let json = body(&request_for(
        &channel,
        vec![crash("doorbot"), back_online()],
    ));
    assert_eq!(json["version"], "4");
    assert_eq!(json["status"], "firing");
    assert_eq!(json["receiver"], "respawn");
    assert_eq!(json["truncatedAlerts"], 0);
    for field in [
        "groupKey",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
    ] {
        assert!(json.get(field).is_some(), "{field}");
    }
    let firing = &json["alerts"][0];
    assert_eq!(firing["status"], "firing");
    assert_eq!(firing["labels"]["alertname"], "ProcessCrashed");
    assert_eq!(firing["labels"]["agent"], "door-pi");
    assert_eq!(firing["labels"]["process"], "doorbot");
    assert_eq!(firing["labels"]["severity"], "warning");
    assert_eq!(
        firing["annotations"]["summary"],
        "door-pi/doorbot crashed: exit 1"
    );
    assert_eq!(
        firing["annotations"]["command"],
        "respawnctl restart door-pi/doorbot"
    );
    assert_eq!(firing["startsAt"], "2027-01-15T08:00:00.000Z");
    assert_eq!(firing["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(firing["fingerprint"].as_str().unwrap().len(), 16);
    let resolved = &json["alerts"][1];
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["labels"]["alertname"], "AgentOffline");
    assert!(resolved["labels"].get("process").is_none());
    assert_eq!(resolved["endsAt"], "2027-01-15T08:05:12.000Z");
    assert_eq!(
        resolved["labels"]["severity"], "critical",
        "as the offline alert was: receivers route the resolution where the alert went"
    );
    assert_ne!(firing["fingerprint"], resolved["fingerprint"]);
    assert!(
        resolved["annotations"].get("command").is_none(),
        "nothing to do about what is over"
    );
    // The labels all alerts share, as Alertmanager's commonLabels.
    assert_eq!(
        json["commonLabels"],
        serde_json::json!({}),
        "two agents, two kinds"
    );
    let two = body(&request_for(&channel, vec![crash("doorbot"), crash("web")]));
    assert_eq!(
        two["commonLabels"],
        serde_json::json!({"agent": "door-pi", "alertname": "ProcessCrashed", "kind": "crashed", "severity": "warning"})
    );
}

#[test]
fn every_kind_of_alert_says_what_happened_and_what_fixes_it() {
    let headline = |kind, phase, facts: Facts| {
        let notice = Notice {
            key: AlertKey {
                agent: "door-pi".into(),
                process: (!kind_is_agent(kind)).then(|| "doorbot".into()),
                kind,
            },
            phase,
            at: t(90),
            since: t(0),
            facts,
        };
        let item = item(&notice, None);
        (
            item.headline,
            item.commands.first().cloned().unwrap_or_default(),
        )
    };
    fn kind_is_agent(kind: AlertKind) -> bool {
        kind.is_agent_level()
    }
    let cases = [
        (
            AlertKind::CrashLoop,
            Phase::Firing,
            "door-pi/doorbot is in a crash loop",
            "respawnctl restart door-pi/doorbot",
        ),
        (
            AlertKind::SpawnFailed,
            Phase::Firing,
            "door-pi/doorbot cannot be started",
            "respawnctl restart door-pi/doorbot",
        ),
        (
            AlertKind::Failed,
            Phase::Firing,
            "door-pi/doorbot was given up",
            "respawnctl start door-pi/doorbot",
        ),
        (
            AlertKind::Offline,
            Phase::Firing,
            "door-pi is offline: its connection was lost",
            "respawnctl status door-pi",
        ),
        (
            AlertKind::Stale,
            Phase::Firing,
            "door-pi stopped responding",
            "respawnctl status door-pi",
        ),
        (
            AlertKind::CrashLoop,
            Phase::Reminder,
            "door-pi/doorbot is still in a crash loop",
            "respawnctl restart door-pi/doorbot",
        ),
        (
            AlertKind::Crashed,
            Phase::Resolved,
            "door-pi/doorbot recovered (resolved), 1m30s after the crash alert began",
            "",
        ),
    ];
    for (kind, phase, expected, command) in cases {
        assert_eq!(
            headline(kind, phase, Facts::default()),
            (expected.to_owned(), command.to_owned())
        );
    }
    // An alert ended by a stop by hand did not recover: it says how it ended.
    let stopped = Facts {
        resolution: Some("stopped by request".into()),
        ..Facts::default()
    };
    assert_eq!(
        headline(AlertKind::CrashLoop, Phase::Resolved, stopped).0,
        "door-pi/doorbot: stopped by request, 1m30s after the crash loop alert began"
    );
    // Nor is an agent whose presence was removed from the broker back.
    let removed = Facts {
        resolution: Some("removed from the broker".into()),
        ..Facts::default()
    };
    assert_eq!(
        headline(AlertKind::Offline, Phase::Resolved, removed).0,
        "door-pi: removed from the broker, 1m30s after the offline alert began"
    );
}

#[test]
fn an_alerter_without_its_broker_says_which_broker_why_and_what_it_cannot_see() {
    let notice = |phase, facts| Notice {
        key: AlertKey {
            agent: "mqtt://hub.lan:1883".into(),
            process: None,
            kind: AlertKind::BrokerUnreachable,
        },
        phase,
        at: t(90),
        since: t(0),
        facts,
    };
    let refused = Facts {
        error: Some("cannot reach the broker at mqtt://hub.lan:1883: connection refused".into()),
        log_command: Some("journalctl -u respawn-alerts.service -n 50".into()),
        ..Facts::default()
    };
    let firing = item(&notice(Phase::Firing, refused.clone()), None);
    assert_eq!(
        firing.headline,
        "the alerter has no connection to the broker mqtt://hub.lan:1883"
    );
    assert_eq!(
        firing.details[..2],
        [
            "cannot reach the broker at mqtt://hub.lan:1883: connection refused",
            "crashes are told when it is back; an agent going offline cannot be noticed"
        ]
    );
    assert_eq!(
        firing.commands,
        ["journalctl -u respawn-alerts.service -n 50"]
    );
    let outside_a_service = Facts {
        log_command: None,
        ..refused.clone()
    };
    let firing_elsewhere = item(&notice(Phase::Firing, outside_a_service), None);
    assert!(
        firing_elsewhere.commands.is_empty(),
        "no command that would be wrong"
    );
    assert_eq!(mark(&firing).emoji, "🔴");
    assert_eq!(
        item(&notice(Phase::Reminder, refused.clone()), None).headline,
        "mqtt://hub.lan:1883 is still unreachable"
    );
    let back = Facts {
        resolution: Some("reached again".into()),
        ..refused
    };
    let resolved = item(&notice(Phase::Resolved, back.clone()), None);
    assert_eq!(
        resolved.headline,
        "the alerter reaches the broker mqtt://hub.lan:1883 again, after 1m30s"
    );
    assert!(resolved.details.is_empty(), "{:?}", resolved.details);
    assert_eq!(mark(&resolved).emoji, "✅");
    let channel = Channel::Webhook {
        url: "http://hooks.lan/respawn".into(),
    };
    let json = body(&request_for(&channel, vec![notice(Phase::Resolved, back)]));
    let labels = &json["alerts"][0]["labels"];
    assert_eq!(labels["alertname"], "BrokerUnreachable");
    assert_eq!(labels["broker"], "mqtt://hub.lan:1883");
    assert!(labels.get("agent").is_none(), "{labels}");
    assert_eq!(labels["severity"], "critical");
    // With an agent's news in the same message, the broker is not counted as an agent, nor
    // is its news said to come from the agent.
    let both = body(&request_for(
        &channel,
        vec![crash("doorbot"), notice(Phase::Firing, Facts::default())],
    ));
    assert_eq!(
        both["commonAnnotations"]["summary"],
        "🔴 2 updates from door-pi and the alerter's broker"
    );
    // Slack and Discord show the heading of several items in the channel too, not only in
    // the notification.
    let slack = Channel::Slack {
        url: "http://hooks.lan/slack".into(),
    };
    let blocks = body(&request_for(&slack, vec![crash("doorbot"), crash("web")]));
    assert_eq!(
        blocks["blocks"][0]["text"]["text"],
        "*🟠 2 updates from door-pi*"
    );
    let discord = Channel::Discord {
        url: "http://hooks.lan/discord".into(),
    };
    let embeds = body(&request_for(&discord, vec![crash("doorbot"), crash("web")]));
    assert_eq!(embeds["content"], "🟠 2 updates from door-pi");
    let alone = body(&request_for(&discord, vec![crash("doorbot")]));
    assert_eq!(alone["content"], "", "one item's embed is its own heading");
    // A new crash beside the reminder of an outage heads the message as news.
    let reminder = notice(Phase::Reminder, Facts::default());
    let mixed = body(&request_for(&channel, vec![reminder, crash("doorbot")]));
    assert_eq!(
        mixed["commonAnnotations"]["summary"],
        "🟠 2 updates from door-pi and the alerter's broker"
    );
}

#[test]
fn answers_are_read_as_each_service_means_them() {
    let answer = |status, retry_after: Option<&str>, body: &str| {
        interpret(&HttpResponse {
            status,
            retry_after: retry_after.map(str::to_owned),
            body: body.into(),
        })
    };
    assert_eq!(answer(200, None, "ok"), Delivery::Delivered);
    assert_eq!(answer(204, None, ""), Delivery::Delivered);
    assert_eq!(
        answer(429, Some("7"), ""),
        Delivery::RetryAfter(Duration::from_secs(7))
    );
    assert_eq!(
        answer(
            429,
            Some("1"),
            r#"{"message":"You are being rate limited.","retry_after":2.5,"global":false}"#
        ),
        Delivery::RetryAfter(Duration::from_millis(2500)),
        "Discord: the longer of the two"
    );
    assert_eq!(
        answer(
            429,
            None,
            r#"{"ok":false,"error_code":429,"parameters":{"retry_after":11}}"#
        ),
        Delivery::RetryAfter(Duration::from_secs(11)),
        "Telegram"
    );
    assert_eq!(
        answer(
            429,
            None,
            r#"{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":1500}"#
        ),
        Delivery::RetryAfter(Duration::from_millis(1500)),
        "Matrix"
    );
    assert_eq!(
        answer(429, None, r#"{"code":42901}"#),
        Delivery::RetryAfter(Duration::from_secs(5)),
        "ntfy: no hint, a default"
    );
    let later = SystemTime::now() + Duration::from_secs(120);
    let date = httpdate_of(later);
    match answer(429, Some(&date), "") {
        Delivery::RetryAfter(d) => assert!((100..=121).contains(&d.as_secs()), "{d:?}"),
        other => panic!("{other:?}"),
    }
    // A date far ahead asks for no more than a day, as a number does.
    assert_eq!(
        answer(429, Some("Fri, 31 Dec 9999 23:59:59 GMT"), ""),
        Delivery::RetryAfter(Duration::from_secs(86_400))
    );
    assert_eq!(
        answer(429, Some("NaN"), ""),
        Delivery::RetryAfter(Duration::from_secs(5)),
        "nonsense is no wait at all"
    );
    assert_eq!(
        answer(500, None, "oops"),
        Delivery::Transient("HTTP 500: oops".into())
    );
    assert_eq!(
        answer(503, None, ""),
        Delivery::Transient("HTTP 503".into())
    );
    assert_eq!(
        answer(400, None, "invalid_payload"),
        Delivery::Permanent("HTTP 400: invalid_payload".into())
    );
    assert_eq!(
        answer(
            400,
            None,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: message text is empty"}"#
        ),
        Delivery::Permanent(
            r#"HTTP 400: {"ok":false,"error_code":400,"description":"Bad Request: message text is empty"}"#
                .into()
        ),
        "Telegram: the message's fault"
    );
    let moved = r#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234567890}}"#;
    assert_eq!(
        answer(400, None, moved),
        Delivery::Transient(format!("HTTP 400: {moved} (the group is now a supergroup: set chat_id = \"-1001234567890\" in alerts.toml)")),
        "Telegram: the chat moved; kept until the configuration follows"
    );
    let missing = r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#;
    assert_eq!(
        answer(400, None, missing),
        Delivery::Transient(format!(
            "HTTP 400: {missing} (check chat_id, and that the bot is in the chat)"
        )),
    );
    assert_eq!(
        answer(429, Some("0"), ""),
        Delivery::RetryAfter(Duration::from_secs(1)),
        "at least a second"
    );
    assert!(matches!(
        answer(404, None, "no_service"),
        Delivery::Transient(_)
    ));
}

/// `Wed, 25 Nov 2026 03:12:05 GMT` for `t`.
fn httpdate_of(t: SystemTime) -> String {
    let rfc = humantime::format_rfc3339_seconds(t).to_string();
    let (date, time) = rfc.trim_end_matches('Z').split_once('T').unwrap();
    let [year, month, day]: [&str; 3] = date.split('-').collect::<Vec<_>>().try_into().unwrap();
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months[month.parse::<usize>().unwrap() - 1];
    format!("Mon, {day} {month} {year} {time} GMT")
}

#[test]
fn the_test_message_names_itself_and_reads_as_neither_a_crash_nor_its_end() {
    let json = body(&request(
        &Channel::Slack {
            url: "https://hooks.slack.com/x".into(),
        },
        &test_batch(t(0)),
    ));
    assert_eq!(json["text"], "🔔 respawnctl alerts test: this target works");
    let ntfy = Channel::Ntfy {
        url: "https://ntfy.sh/door-alerts".into(),
        token: None,
    };
    let json = body(&request(&ntfy, &test_batch(t(0))));
    assert_eq!(json["title"], "respawnctl alerts test: this target works");
    // Alertmanager's receivers know a firing TestAlert from Grafana's and amtool's tests.
    let webhook = Channel::Webhook {
        url: "https://hooks.example/alerts".into(),
    };
    let json = body(&request(&webhook, &test_batch(t(0))));
    assert_eq!(json["status"], "firing");
    let alert = &json["alerts"][0];
    assert_eq!(
        (&alert["status"], &alert["labels"]["alertname"]),
        (&"firing".into(), &"TestAlert".into())
    );
    for channel in [ntfy, webhook] {
        let text = String::from_utf8(request(&channel, &test_batch(t(0))).body).unwrap();
        assert!(
            !text.contains("after the ") && !text.contains("resolved") && !text.contains("crash"),
            "{text}"
        );
    }
}

#[test]
fn an_oom_kill_reads_as_the_kernels_doing_with_its_limit() {
    let mut notice = crash("doorbot");
    notice.facts.exit = Some(ExitStatus::Signal {
        signal: "SIGKILL".into(),
        core_dumped: false,
    });
    notice.facts.oom_killed = true;
    notice.facts.memory_max = Some(200_000_000);
    let channel = Channel::Slack {
        url: "https://hooks.slack.com/services/T/B/X".into(),
    };
    let json = body(&request_for(&channel, vec![notice.clone()]));
    assert_eq!(
        json["text"],
        "🟠 door-pi/doorbot was killed by the kernel: out of memory (limit 200 MB)"
    );
    notice.facts.memory_max = None;
    let json = body(&request_for(&channel, vec![notice]));
    assert_eq!(
        json["text"],
        "🟠 door-pi/doorbot was killed by the kernel: out of memory"
    );
}

#[test]
fn a_wait_counts_from_when_the_message_is_told() {
    let crash = crash("doorbot");
    let waits = |told: Option<SystemTime>| {
        let details = item(&crash, told).details;
        details
            .into_iter()
            .find(|d| d.starts_with("next start") || d.starts_with("restarting"))
    };
    assert_eq!(waits(None).as_deref(), Some("next start in 4s"));
    // Held 3 s (its grace, a chat outage): the start is a second away when it is read.
    let later = crash.at + Duration::from_secs(3);
    assert_eq!(waits(Some(later)).as_deref(), Some("next start in 1s"));
    // Told after the start was due: it is under way.
    let late = crash.at + Duration::from_secs(9);
    assert_eq!(waits(Some(late)).as_deref(), Some("restarting at once"));
    // A clock behind the notice's own time counts from the notice.
    let early = crash.at - Duration::from_secs(60);
    assert_eq!(waits(Some(early)).as_deref(), Some("next start in 4s"));
}

#[test]
fn a_restart_after_a_stable_run_reads_as_at_once() {
    let crash = crash("doorbot");
    assert!(item(&crash, None)
        .details
        .contains(&"next start in 4s".to_owned()));
    // A backoff under a second is soon, not at once.
    let soon = Notice {
        facts: Facts {
            next_start: Some(crash.at + Duration::from_millis(816)),
            ..crash.facts.clone()
        },
        ..crash.clone()
    };
    assert!(item(&soon, None)
        .details
        .contains(&"next start in 800ms".to_owned()));
    let at_once = Notice {
        facts: Facts {
            next_start: Some(crash.at),
            ..crash.facts.clone()
        },
        ..crash
    };
    let details = item(&at_once, None).details;
    assert!(
        details.contains(&"restarting at once".to_owned()),
        "{details:?}"
    );
    assert!(
        !details.iter().any(|d| d.starts_with("next start")),
        "{details:?}"
    );
}

/// Found by a review: a fence in a detail (a health probe's last line of output) opened a
/// code block that swallowed the rest of a Markdown message, the commands with it.
#[test]
fn a_fence_in_a_detail_or_the_log_leaves_the_markdown_services_one_code_block() {
    let mut fenced = crash("doorbot");
    fenced.facts.error = Some("probe said: ```oops".into());
    fenced.facts.log_tail[0].text = "```".into();
    let fences_in = |text: &str| text.matches("```").count();
    let slack = body(&request_for(
        &Channel::Slack {
            url: "https://hooks.slack.com/services/T/B/X".into(),
        },
        vec![fenced.clone()],
    ));
    let section = slack["blocks"][0]["text"]["text"].as_str().unwrap();
    assert_eq!(fences_in(section), 2, "{section}");
    assert!(section.contains("probe said: ʼʼʼoops"), "{section}");
    let discord = body(&request_for(
        &Channel::Discord {
            url: "https://discord.com/api/webhooks/1/abc".into(),
        },
        vec![fenced.clone()],
    ));
    let description = discord["embeds"][0]["description"].as_str().unwrap();
    assert_eq!(fences_in(description), 2, "{description}");
    let ntfy = body(&request_for(
        &Channel::Ntfy {
            url: "https://ntfy.sh/door-alerts".into(),
            token: None,
        },
        vec![fenced],
    ));
    let message = ntfy["message"].as_str().unwrap();
    assert_eq!(fences_in(message), 2, "{message}");
    assert!(
        message
            .trim_end()
            .ends_with("`respawnctl logs door-pi/doorbot`"),
        "{message}"
    );
}

/// Found by a new-user run: the end of a giving up still said it stays down until started.
#[test]
fn a_giving_up_says_it_stays_down_only_while_it_lasts() {
    let given_up = |phase| {
        let mut notice = crash_notice("doorbot");
        notice.key.kind = AlertKind::Failed;
        notice.phase = phase;
        notice.facts.restarts = Some(5);
        item(&notice, None).details
    };
    assert!(given_up(Phase::Firing)
        .contains(&"no more restarts after 5; it stays down until started".to_owned()));
    let ended = given_up(Phase::Resolved);
    assert!(
        ended.contains(&"it had given up after 5 restarts".to_owned()),
        "{ended:?}"
    );
    assert!(!ended.iter().any(|d| d.contains("stays down")), "{ended:?}");
}

/// What an agent says is text to every service: it can neither format nor link in the
/// Markdown that Discord and ntfy read, nor reach anyone's screen as control characters or
/// a direction mark (found by a hostile-input review).
#[test]
fn what_an_agent_says_reaches_no_service_as_markup_or_control_characters() {
    let hostile =
        "*bold* [link](http://evil) ![img](http://evil/x.png) <@everyone> ||spoiler|| `code` # big";
    let mut spawn_failed = crash_notice("doorbot");
    spawn_failed.key.kind = AlertKind::SpawnFailed;
    spawn_failed.facts.error = Some(format!("{hostile} \u{202e}txt \u{1b}[31m\u{7}"));
    spawn_failed.facts.log_tail = vec![LogLine {
        at: t(0),
        stream: Stream::Stderr,
        text: "\u{1b}]0;owned\u{7} \u{202e}gnp.exe".into(),
    }];
    let discord = Channel::Discord {
        url: "https://discord.com/api/webhooks/1/abc".into(),
    };
    let ntfy = Channel::Ntfy {
        url: "https://ntfy.sh/door-alerts".into(),
        token: None,
    };
    let escaped = r"\*bold\* \[link\](http://evil) !\[img\](http://evil/x.png) \<@everyone\> \|\|spoiler\|\| \`code\` \# big";
    let markdown = [
        body(&request_for(&discord, vec![spawn_failed.clone()]))["embeds"][0]["description"]
            .clone(),
        body(&request_for(&ntfy, vec![spawn_failed.clone()]))["message"].clone(),
    ];
    for text in markdown {
        let text = text.as_str().unwrap().to_owned();
        assert!(text.contains(escaped), "{text}");
    }
    let channels = [
        discord,
        ntfy,
        Channel::Slack {
            url: "https://hooks.slack.com/services/T/B/X".into(),
        },
        Channel::Telegram {
            token: "123:abc".into(),
            chat_id: "-100123".into(),
            api: "https://api.telegram.org".into(),
        },
        Channel::Matrix {
            homeserver: "https://matrix.example.org".into(),
            room: "!abc:example.org".into(),
            token: "syt_secret".into(),
        },
        Channel::Webhook {
            url: "http://hooks.lan/respawn".into(),
        },
    ];
    // Every text of the request as the service reads it, JSON's escapes undone.
    fn texts(value: &serde_json::Value, into: &mut String) {
        match value {
            serde_json::Value::String(text) => into.push_str(text),
            serde_json::Value::Array(items) => items.iter().for_each(|v| texts(v, into)),
            serde_json::Value::Object(fields) => fields.values().for_each(|v| texts(v, into)),
            _ => {}
        }
    }
    for channel in &channels {
        let mut text = String::new();
        texts(
            &body(&request_for(channel, vec![spawn_failed.clone()])),
            &mut text,
        );
        assert!(
            !text.contains(['\u{1b}', '\u{7}', '\u{202e}']),
            "{channel:?}: {text:?}"
        );
        assert!(
            text.contains(r"\u{202e}txt"),
            "{channel:?}: shown escaped: {text}"
        );
        assert!(
            text.contains(r"\u{202e}gnp.exe"),
            "{channel:?}: the log too: {text}"
        );
    }
}
