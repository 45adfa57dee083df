#!/usr/bin/env python3
"""End to end against a real Home Assistant: a private Mosquitto, a real respawn-agent, the
hub (`respawnctl serve` with `[homeassistant]`) and Home Assistant 2024.3.3 from PyPI, set up
through its own REST API the way a new user's clicks would (onboarding, then the MQTT
integration). It checks that the agent's processes appear as entities with their state, that
only the allow-listed process has a Restart button, and that pressing it restarts the program
with a signed command (a new pid, the old one gone) and says so on the "last command" sensor.

Too heavy for CI (Home Assistant and its requirements are ~400 MB in a venv, and its first
start installs more); run it by hand:

    scripts/home-assistant-e2e.py            # builds, creates the venv when missing
    HA_VENV=/path/to/venv scripts/home-assistant-e2e.py --no-build
    scripts/home-assistant-e2e.py --screenshot=docs/screenshots/home-assistant-device.png
        # also: Home Assistant's frontend (home-assistant-frontend from PyPI), chromedriver

Prints each step and ends with RESULT: PASS or RESULT: FAIL (exit code 0 or 1).
Needs: mosquitto, python3 with venv, network access to PyPI the first time.
"""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HA_VERSION = "2024.3.3"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("HA_VENV", os.path.expanduser("~/.cache/respawn-ha-venv"))
AGENT = "e2e-pi"


def step(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, condition, timeout, every=0.5):
    """Polls `condition` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError, KeyError) as e:
            last_error = e
        time.sleep(every)
    print(f"timed out after {timeout}s waiting for {what} (last error: {last_error})", flush=True)
    print("RESULT: FAIL", flush=True)
    raise SystemExit(1)


def ensure_venv():
    hass = os.path.join(VENV, "bin", "hass")
    if os.path.exists(hass):
        return hass
    step(f"creating {VENV} with homeassistant=={HA_VERSION} (several minutes, once)")
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    pip = os.path.join(VENV, "bin", "pip")
    subprocess.run([pip, "install", "-q", "--upgrade", "pip"], check=True)
    # acme (through the cloud integration) breaks on josepy 2, which pip would pick.
    subprocess.run([pip, "install", "-q", f"homeassistant=={HA_VERSION}", "josepy<2"],
                   check=True)
    return hass


class HomeAssistant:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"
        self.token = None

    def request(self, method, path, body=None, form=False):
        headers = {}
        data = None
        if body is not None and form:
            data = urllib.parse.urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=30) as answer:
            return json.loads(answer.read() or b"null")

    def onboard(self):
        """Goes through a new Home Assistant's onboarding: creates the owner, logs in, and
        accepts the other pages as they are."""
        client_id = self.base + "/"
        owner = self.request("POST", "/api/onboarding/users", {
            "client_id": client_id, "name": "e2e", "username": "e2e",
            "password": "respawn-e2e-password", "language": "en",
        })
        tokens = self.request("POST", "/auth/token", {
            "grant_type": "authorization_code", "code": owner["auth_code"],
            "client_id": client_id,
        }, form=True)
        self.token = tokens["access_token"]
        self.tokens = tokens
        # The remaining pages of onboarding (location, analytics, integrations), as accepted.
        try:
            self.request("POST", "/api/onboarding/core_config", {})
        except urllib.error.HTTPError as e:
            # The step is marked done first; then Home Assistant sets up its default extras
            # (weather, radio, translation), whose packages this venv does not have.
            step(f"  core_config: {e} (its default extras could not be set up; not needed)")
        self.request("POST", "/api/onboarding/analytics", {})
        self.request("POST", "/api/onboarding/integration",
                     {"client_id": client_id, "redirect_uri": client_id})
        undone = [s["step"] for s in self.request("GET", "/api/onboarding") if not s["done"]]
        if undone:
            raise SystemExit(f"onboarding steps not done: {undone}")

    def add_mqtt(self, broker_port):
        """Settings → Devices & services → Add integration → MQTT, broker and port."""
        flow = self.request("POST", "/api/config/config_entries/flow",
                            {"handler": "mqtt", "show_advanced_options": False})
        result = self.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                              {"broker": "127.0.0.1", "port": broker_port})
        if result.get("type") != "create_entry":
            raise SystemExit(f"the MQTT integration was not added: {result}")

    def device_of(self, entity):
        req = urllib.request.Request(
            self.base + "/api/template", method="POST",
            data=json.dumps({"template": f"{{{{ device_id('{entity}') }}}}"}).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as answer:
            return answer.read().decode().strip()

    def states(self):
        return {s["entity_id"]: s for s in self.request("GET", "/api/states")}


def screenshot(ha, entity, path):
    """The device page of `entity` in Home Assistant's own frontend, logged in with the token
    the onboarding gave, saved as a PNG."""
    port = free_port()
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def call(method, path, body=None):
        req = urllib.request.Request(base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as answer:
            return json.loads(answer.read())["value"]

    session = None
    try:
        wait_for("chromedriver", lambda: socket.create_connection(("127.0.0.1", port)), 10)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,860",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run"]
        session = call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"args": args}}}})["sessionId"]
        at = f"/session/{session}"
        run = lambda script: call("POST", f"{at}/execute/sync", {"script": script, "args": []})
        call("POST", f"{at}/url", {"url": ha.base + "/onboarding.html"})
        tokens = dict(ha.tokens, hassUrl=ha.base, clientId=ha.base + "/",
                      expires=int(time.time() * 1000) + ha.tokens["expires_in"] * 1000)
        run(f"localStorage.setItem('hassTokens', {json.dumps(json.dumps(tokens))});")
        device = ha.device_of(entity)
        call("POST", f"{at}/url", {"url": f"{ha.base}/config/devices/device/{device}"})
        step(f"  browser at {run('return location.href;')}")
        wait_for("the frontend's connection", lambda: run(
            f"const h = document.querySelector('home-assistant');"
            f"return !!(h && h.hass && h.hass.connected && h.hass.states['{entity}']);"), 60)
        # The page draws its cards after the connection: give it a moment (a picture, not a test).
        time.sleep(3)

        png = base64.b64decode(call("GET", f"{at}/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        step(f"screenshot of the device page in {path}")
    finally:
        # Ending the session ends the browser; chromedriver alone would leave it running.
        if session:
            try:
                call("DELETE", f"/session/{session}")
            except (OSError, urllib.error.URLError):
                pass
        driver.terminate()
        driver.wait(timeout=10)


def main():
    build = "--no-build" not in sys.argv
    shot = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--screenshot=")), None)
    if build:
        step("building respawn-agent and respawnctl")
        subprocess.run(["cargo", "build", "-j2", "-q", "-p", "respawn-agent", "-p",
                        "respawn-controller"], cwd=REPO, check=True)
    agent_bin = os.path.join(REPO, "target/debug/respawn-agent")
    ctl_bin = os.path.join(REPO, "target/debug/respawnctl")
    hass = ensure_venv()
    version = subprocess.run([hass, "--version"], capture_output=True, text=True).stdout.strip()
    step(f"Home Assistant {version} from {VENV}")

    work = tempfile.mkdtemp(prefix="respawn-ha-e2e-")
    broker_port, hub_port, ha_port = free_port(), free_port(), free_port()
    children = []

    def start(name, argv, **kwargs):
        log = open(os.path.join(work, f"{name}.log"), "w")
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, **kwargs)
        children.append((name, child))
        return child

    try:
        with open(os.path.join(work, "mosquitto.conf"), "w") as f:
            f.write(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n"
                    f"persistence false\n" + ("user root\n" if os.geteuid() == 0 else ""))
        start("mosquitto", ["mosquitto", "-c", os.path.join(work, "mosquitto.conf")])
        wait_for("Mosquitto", lambda: socket.create_connection(("127.0.0.1", broker_port)), 10)
        step(f"Mosquitto on 127.0.0.1:{broker_port}")

        key = os.path.join(work, "hub.key")
        subprocess.run([ctl_bin, "keygen", "--out", key, "--name", "hub"], check=True,
                       capture_output=True)
        public_key = open(key + ".pub").read().strip()
        broker = f"mqtt://127.0.0.1:{broker_port}"
        with open(os.path.join(work, "agent.toml"), "w") as f:
            f.write(f"""[agent]
id = "{AGENT}"
state_dir = "{work}/state"

[mqtt]
url = "{broker}"

[[operator]]
name = "hub"
public_key = "{public_key}"
allow = ["restart"]

[[process]]
name = "doorbot"
command = ["sleep", "1000000"]

[[process]]
name = "worker"
command = ["sleep", "1000000"]
""")
        with open(os.path.join(work, "serve.toml"), "w") as f:
            f.write(f"""listen = "127.0.0.1:{hub_port}"
signing_key = "{key}"

[homeassistant]
allow = ["{AGENT}/doorbot"]
""")
        start("agent", [agent_bin, "--config", os.path.join(work, "agent.toml")])
        start("serve", [ctl_bin, "--broker", broker, "serve", "--config",
                        os.path.join(work, "serve.toml")])
        step("agent and hub started")

        ha_dir = os.path.join(work, "ha")
        os.makedirs(ha_dir)
        with open(os.path.join(ha_dir, "configuration.yaml"), "w") as f:
            f.write(f"""homeassistant:
  name: respawn e2e
  time_zone: UTC
  unit_system: metric
  latitude: 0
  longitude: 0
  elevation: 0
  currency: EUR
  country: DE
http:
  server_host: 127.0.0.1
  server_port: {ha_port}
api:
config:
onboarding:
""" + ("frontend:\n" if shot else ""))
        start("homeassistant", [hass, "-c", ha_dir])
        ha = HomeAssistant(ha_port)
        wait_for("Home Assistant's HTTP server", lambda: ha.request("GET", "/api/onboarding"), 600, 2)
        step(f"Home Assistant answers on 127.0.0.1:{ha_port}")
        ha.onboard()
        step("onboarded: owner created, logged in")
        ha.add_mqtt(broker_port)
        step("MQTT integration added")

        # Home Assistant takes the hub's default_entity_id from 2025.10; before, it names an
        # entity after its device and name (docs/home-assistant.md).
        release = tuple(int(part) for part in HA_VERSION.split(".")[:2])
        agent_slug = AGENT.replace("-", "_")
        prefix = f"respawn_{agent_slug}" if release >= (2025, 10) else agent_slug
        running = f"binary_sensor.{prefix}_doorbot_running"
        restarts = f"sensor.{prefix}_doorbot_restarts"
        last_exit = f"sensor.{prefix}_doorbot_last_exit"
        button = f"button.{prefix}_doorbot_restart"
        last_command = f"sensor.{prefix}_doorbot_last_command"
        worker_running = f"binary_sensor.{prefix}_worker_running"
        problem = f"binary_sensor.{prefix}_doorbot_problem"
        wanted = [running, problem, restarts, last_exit, button, last_command, worker_running]
        states = wait_for("the entities of both processes",
                          lambda: (lambda s: s if all(e in s for e in wanted)
                                   and s[running]["state"] == "on" else None)(ha.states()), 120)
        for entity in wanted:
            step(f"  {entity} = {states[entity]['state']!r}")
        respawn_entities = sorted(e for e in states if e.split(".", 1)[1].startswith(prefix))
        step(f"{len(respawn_entities)} entities of {AGENT}: {', '.join(respawn_entities)}")
        checks = {
            "doorbot running": states[running]["state"] == "on",
            "worker running": states[worker_running]["state"] == "on",
            "doorbot has no problem": states[problem]["state"] == "off",
            "problem is a problem sensor":
                states[problem]["attributes"].get("device_class") == "problem",
            "doorbot restarts is a number": states[restarts]["state"].isdigit(),
            "no Restart button for worker (not allowed)":
                f"button.{prefix}_worker_restart" not in states,
            "restarts is total_increasing":
                states[restarts]["attributes"].get("state_class") == "total_increasing",
            "button is a restart button":
                states[button]["attributes"].get("device_class") == "restart",
        }

        step(f"pressing {button}")
        ha.request("POST", "/api/services/button/press", {"entity_id": button})
        outcome = wait_for("the outcome on the last-command sensor",
                           lambda: (lambda v: v if v.startswith(("restarted", "refused", "failed"))
                                    else None)(ha.states()[last_command]["state"]), 60)
        step(f"  {last_command} = {outcome!r}")
        pids = [int(w) for w in outcome.replace("→", " ").split() if w.isdigit()]
        checks["the press restarted doorbot"] = outcome.startswith("restarted") and len(pids) == 2
        if len(pids) == 2:
            old, new = pids
            checks["a new pid"] = old != new
            checks["the old program is gone"] = not os.path.exists(f"/proc/{old}")
            checks["the new program runs"] = os.path.exists(f"/proc/{new}")
        audit = open(os.path.join(work, "agent.log")).read()
        checks["the agent took a signed restart from the hub's key"] = any(
            "remote command accepted" in line and 'requester="homeassistant"' in line
            and 'signer="hub"' in line and 'command="restart"' in line
            for line in audit.splitlines())
        wait_for("doorbot running again", lambda: ha.states()[running]["state"] == "on", 30)

        if shot:
            screenshot(ha, running, os.path.abspath(shot))

        step("stopping the agent: its entities must become unavailable")
        agent = dict(children)["agent"]
        os.killpg(agent.pid, signal.SIGINT)
        agent.wait(timeout=30)
        gone = wait_for("unavailable entities", lambda: (lambda s: s if all(
            s[e]["state"] == "unavailable" for e in (running, problem, restarts, last_exit, button))
            else None)(ha.states()), 60)
        checks["a stopped agent's entities are unavailable"] = gone[running]["state"] == "unavailable"

        failed = [name for name, ok in checks.items() if not ok]
        for name, ok in checks.items():
            step(f"{'ok  ' if ok else 'FAIL'} {name}")
        print(f"RESULT: {'PASS' if not failed else 'FAIL'} (logs in {work})", flush=True)
        return 0 if not failed else 1
    finally:
        for name, child in reversed(children):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGINT if name == "agent" else signal.SIGTERM)
        for name, child in reversed(children):
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
