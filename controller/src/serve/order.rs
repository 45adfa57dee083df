//! A command the hub sends for a page's button or a Home Assistant press: signed with the
//! hub's key, in someone's name, over a session of its own, and its outcome.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use respawn_common::messages::CommandName;
use respawn_common::signing::SigningKey;

use super::hub::Hub;
use crate::request::{Args, Job, Outcome, Request};
use crate::session::{Session, SessionError};
use crate::settings::Settings;

/// How long a command of the hub waits for the agent.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command could not be sent.
pub(crate) enum Failure {
    NoProcess(String),
    Broker(String),
}

/// A command the hub sends, signed with its key, in someone's name.
pub(crate) struct Order<'a> {
    pub settings: &'a Settings,
    pub key: Option<&'a SigningKey>,
    pub hub: &'a Mutex<Hub>,
    /// The user (or `homeassistant`) the agent's audit names.
    pub requester: &'a str,
}

impl Order<'_> {
    /// Sends `command` to `agent`'s `process` and waits for its outcome.
    pub async fn send(
        &self,
        command: CommandName,
        agent: &str,
        process: &str,
        args: Args,
    ) -> Result<Outcome, Failure> {
        let agent_session = {
            let hub = self.hub.lock().unwrap_or_else(PoisonError::into_inner);
            let known = hub
                .fleet()
                .agent(agent)
                .filter(|a| a.process_names().contains(&process))
                .ok_or_else(|| Failure::NoProcess(format!("no process {agent}/{process}")))?;
            if let Some(not_sent) = crate::request::not_sent_to(Some(known.liveness())) {
                return Ok(not_sent);
            }
            known.session().map(str::to_owned)
        };
        let broker = |e: SessionError| Failure::Broker(e.to_string());
        let mut mqtt = Session::connect(self.settings, false)
            .await
            .map_err(broker)?;
        let request = Request {
            topics: &self.settings.topics,
            requester: self.requester,
            command,
            args,
            key: self.key,
            timeout: COMMAND_TIMEOUT,
        };
        let job = Job::new(agent, Some(process), agent_session.as_deref());
        // A read for a page, and the same sent again to an agent that reconnected meanwhile.
        let page_read = |job: &Job| {
            if command == CommandName::Logs {
                let mut hub = self.hub.lock().unwrap_or_else(PoisonError::into_inner);
                hub.page_read(&job.agent, &job.cmd_id);
            }
        };
        page_read(&job);
        let topics = &self.settings.topics;
        let outcome = crate::request::send_one(&mut mqtt, topics, &request, job, page_read).await;
        mqtt.close().await;
        outcome.map_err(broker)
    }
}
