// The page: tabs, the server's configuration, and the banner shown when the server is gone.

import { ServerUnreachable, goneMessage, request } from "./api.js";
import { GatewayView } from "./gateway.js";
import { SpeakView } from "./speak.js";
import { TalkView } from "./talk.js";

const banner = document.getElementById("banner");

/** Tabs as the WAI-ARIA pattern has them: arrow keys, Home and End move between tabs. */
function setUpTabs(onShow) {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const show = (tab, focus) => {
    for (const t of tabs) {
      const selected = t === tab;
      t.setAttribute("aria-selected", String(selected));
      t.tabIndex = selected ? 0 : -1;
      document.getElementById(t.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
    history.replaceState(null, "", `#${tab.id.replace("tab-", "")}`);
    onShow(tab.id.replace("tab-", ""));
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => show(tab, false));
    tab.addEventListener("keydown", (e) => {
      const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
      if (to === undefined) return;
      e.preventDefault();
      show(tabs[(to + tabs.length) % tabs.length], true);
    });
  });
  const wanted = tabs.find((t) => t.id === `tab-${location.hash.slice(1)}`);
  show(wanted || tabs[0], false);
}

/** Shown when the server cannot be reached; hidden again once it answers. */
export function serverGone(gone, retry) {
  banner.hidden = !gone;
  if (gone) {
    document.getElementById("banner-text").textContent = goneMessage(
      "press Retry (this page also reconnects on its own)"
    );
    document.getElementById("banner-retry").onclick = retry;
  }
}

async function main() {
  const talk = new TalkView(document.getElementById("view-talk"));
  const speak = new SpeakView(document.getElementById("view-speak"));
  const gateway = new GatewayView(document.getElementById("view-gateway"), serverGone);
  let index = null;
  const load = async () => {
    try {
      index = await request("GET", "/v1");
      document.getElementById("version").textContent = `v${index.version}`;
      gateway.setGateway(index.gateway);
      const config = await gateway.loadConfig();
      if (config) {
        talk.configure(config);
        speak.configure(config);
      }
      serverGone(false);
    } catch (err) {
      if (err instanceof ServerUnreachable) serverGone(true, load);
      else console.error(err);
    }
  };
  setUpTabs((name) => gateway.visible(name === "gateway"));
  await load();
}

main();
