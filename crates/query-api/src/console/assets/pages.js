// The console's pages. Each renders into `context.section` and returns a function that stops
// what it started (its change stream). Times are shown in the viewer's time zone.

import { api, follow } from "/console/api.js";

const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short", timeZone: zone });
const STATUSES = ["OPEN", "ACKNOWLEDGED", "SNOOZED", "SUPPRESSED", "RESOLVED"];
const URGENCIES = ["HIGH", "MEDIUM", "LOW"];

// An element: el("td", {class: "x"}, "text", child…).
function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.filter((c) => c !== null && c !== undefined));
  return element;
}

const time = (value) => (value ? when.format(new Date(value)) : "–");
const badge = (value) => el("span", { class: `badge ${String(value).toLowerCase()}` }, String(value));
const can = (session, scope) => session.scopes.includes(scope);

async function serviceNames() {
  const { services } = await api("GET", "/api/services?limit=200");
  return new Map(services.map((s) => [s.id, s.name]));
}

// ---------------------------------------------------------------------------------------------
// Incidents: filter by service, status and urgency; new and changed incidents appear live.

export async function incidentsPage({ section, report }) {
  const names = await serviceNames();
  const params = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const chosen = {
    status: params.get("status") ? params.get("status").split(",") : ["OPEN", "ACKNOWLEDGED", "SNOOZED", "SUPPRESSED"],
    serviceId: params.get("serviceId") ?? "",
    urgency: params.get("urgency") ?? "",
  };
  const apply = () => {
    const query = new URLSearchParams();
    query.set("status", chosen.status.join(","));
    if (chosen.serviceId) query.set("serviceId", chosen.serviceId);
    if (chosen.urgency) query.set("urgency", chosen.urgency);
    location.hash = `#/incidents?${query}`;
  };
  const filters = el(
    "form",
    { class: "filters", "aria-label": "Filters", onchange: (event) => {
      const form = new FormData(event.currentTarget);
      chosen.status = form.getAll("status");
      chosen.serviceId = form.get("serviceId");
      chosen.urgency = form.get("urgency");
      apply();
    } },
    el("fieldset", {}, el("legend", {}, "Status"),
      ...STATUSES.map((s) => el("label", {}, el("input", { type: "checkbox", name: "status", value: s, checked: chosen.status.includes(s) }), ` ${s.toLowerCase()}`))),
    el("label", {}, "Service ",
      el("select", { name: "serviceId" }, el("option", { value: "" }, "All services"),
        ...[...names].map(([id, name]) => el("option", { value: id, selected: id === chosen.serviceId }, name)))),
    el("label", {}, "Urgency ",
      el("select", { name: "urgency" }, el("option", { value: "" }, "Any"),
        ...URGENCIES.map((u) => el("option", { value: u, selected: u === chosen.urgency }, u.toLowerCase())))),
  );
  const body = el("tbody", {});
  const empty = el("tr", { class: "empty" }, el("td", { colspan: 6 }, "No incidents match."));
  const table = el("table", { class: "incidents" },
    el("caption", {}, "Incidents, newest first; changes appear as they happen"),
    el("thead", {}, el("tr", {}, ...["Status", "Urgency", "Title", "Service", "Alerts", "Opened"].map((h) => el("th", { scope: "col" }, h)))),
    body);
  section.append(el("h1", {}, "Incidents"), filters, table);

  const matches = (incident) =>
    chosen.status.includes(incident.status) &&
    (!chosen.serviceId || incident.serviceId === chosen.serviceId) &&
    (!chosen.urgency || incident.urgency === chosen.urgency);
  const row = (incident) =>
    el("tr", { "data-id": incident.id, "data-status": incident.status },
      el("td", {}, badge(incident.status)),
      el("td", {}, badge(incident.urgency)),
      el("td", {}, el("a", { href: `#/incidents/${encodeURIComponent(incident.id)}` }, incident.title || incident.dedupKey)),
      el("td", {}, names.get(incident.serviceId) ?? incident.serviceId),
      el("td", { class: "number" }, String(incident.alertCount)),
      el("td", {}, time(incident.createdAt)));
  const show = (incident) => {
    const existing = body.querySelector(`tr[data-id="${CSS.escape(incident.id)}"]`);
    if (!matches(incident)) {
      existing?.remove();
    } else if (existing) {
      existing.replaceWith(row(incident));
    } else {
      const fresh = row(incident);
      fresh.classList.add("fresh");
      body.prepend(fresh);
    }
    empty.hidden = body.querySelector("tr[data-id]") !== null;
  };
  const load = async () => {
    const query = new URLSearchParams({ status: chosen.status.join(",") || "OPEN", limit: "100" });
    if (chosen.serviceId) query.set("serviceId", chosen.serviceId);
    if (chosen.urgency) query.set("urgency", chosen.urgency);
    const { incidents } = await api("GET", `/api/incidents?${query}`);
    body.replaceChildren(empty);
    for (const incident of incidents.reverse()) {
      show({ ...incident, serviceId: incident.service.id });
    }
    for (const fresh of body.querySelectorAll(".fresh")) fresh.classList.remove("fresh");
  };
  await load();
  return follow({ topics: "incidents" }, (change) => show(change.incident), () => load().catch(report));
}

// ---------------------------------------------------------------------------------------------
// One incident: its state, actions, timeline and alerts.

export async function incidentPage({ section, session, report, toast }, id) {
  const heading = el("h1", {}, "Incident");
  const facts = el("dl", { class: "facts" });
  const actions = el("div", { class: "actions", role: "group", "aria-label": "Actions" });
  const timeline = el("ol", { class: "timeline" });
  const alerts = el("ul", { class: "alerts" });
  section.append(el("p", {}, el("a", { href: "#/incidents" }, "← Incidents")), heading, facts, actions,
    el("h2", {}, "Timeline"), timeline, el("h2", {}, "Alerts"), alerts);
  const users = can(session, "users:read") ? (await api("GET", "/api/users?limit=200")).users : [];
  const people = new Map(users.map((u) => [u.id, u.name]));

  const change = async (body, done) => {
    try {
      await api("PATCH", `/api/incidents/${encodeURIComponent(id)}`, body);
      toast(done);
      await render();
    } catch (err) {
      report(err);
    }
  };
  const render = async () => {
    const { incident } = await api("GET", `/api/incidents/${encodeURIComponent(id)}`);
    heading.textContent = incident.title || incident.dedupKey;
    const escalation = incident.escalation
      ? `${incident.escalation.status.toLowerCase()}, next step ${incident.escalation.step}` +
        (incident.escalation.nextAt ? ` at ${time(incident.escalation.nextAt)}` : "")
      : "no policy";
    const pairs = [
      ["Status", badge(incident.status)], ["Urgency", badge(incident.urgency)], ["Priority", incident.priority ?? "–"],
      ["Service", incident.service.name], ["Assignee", incident.assignee?.name ?? "nobody"],
      ["Alerts", String(incident.alertCount)], ["Opened", time(incident.createdAt)], ["Escalation", escalation],
    ];
    facts.replaceChildren(...pairs.flatMap(([term, value]) => [el("dt", {}, term), el("dd", { "data-fact": term.toLowerCase() }, value)]));
    const open = incident.status !== "RESOLVED";
    actions.replaceChildren(
      el("button", { type: "button", disabled: !open || incident.status === "ACKNOWLEDGED",
        onclick: () => change({ status: "ACKNOWLEDGED" }, "Acknowledged.") }, "Acknowledge"),
      el("button", { type: "button", disabled: !open, onclick: () => change({ status: "RESOLVED" }, "Resolved.") }, "Resolve"),
      el("form", { class: "inline", onsubmit: (event) => {
        event.preventDefault();
        const hours = Number(new FormData(event.currentTarget).get("hours"));
        change({ status: "SNOOZED", snoozedUntil: new Date(Date.now() + hours * 3600e3).toISOString() }, "Snoozed.");
      } },
        el("label", {}, "Snooze for ", el("select", { name: "hours" }, ...[1, 4, 24].map((h) => el("option", { value: h }, `${h} h`)))),
        el("button", { type: "submit", disabled: !open }, "Snooze")),
      el("form", { class: "inline", onsubmit: (event) => {
        event.preventDefault();
        const assignee = new FormData(event.currentTarget).get("assigneeId");
        change({ assigneeId: assignee || null }, assignee ? "Assigned." : "Unassigned.");
      } },
        el("label", {}, "Assign to ", users.length
          ? el("select", { name: "assigneeId" }, el("option", { value: "" }, "nobody"),
              ...users.map((u) => el("option", { value: u.id, selected: u.id === incident.assignee?.id }, u.name)))
          : el("input", { name: "assigneeId", placeholder: "usr_…", value: incident.assignee?.id ?? "" })),
        el("button", { type: "submit" }, "Assign")),
      el("form", { class: "note", onsubmit: (event) => {
        event.preventDefault();
        const note = new FormData(event.currentTarget).get("note").trim();
        if (note) change({ note }, "Note added.").then(() => event.target.reset());
      } },
        el("label", {}, "Note ", el("textarea", { name: "note", rows: 2, maxlength: 4096 })),
        el("button", { type: "submit" }, "Add note")),
    );
    timeline.replaceChildren(...incident.timeline.map((entry) =>
      el("li", {}, el("time", { datetime: entry.at }, time(entry.at)), " ",
        el("strong", {}, entry.type === "event" || entry.type === "change" ? `${entry.action} (${entry.outcome})` : entry.type),
        " ", entry.message ?? entry.summary ?? "",
        entry.actor ? el("span", { class: "actor" }, ` by ${people.get(entry.actor) ?? entry.actor}`) : null)));
    alerts.replaceChildren(...incident.alerts.map((alert) =>
      el("li", {}, el("time", { datetime: alert.receivedAt ?? alert.received_at }, time(alert.receivedAt ?? alert.received_at)), " ", alert.summary ?? "")));
  };
  await render();
  return follow({ topics: "incidents" }, (c) => c.incidentId === id && render().catch(report), () => render().catch(report));
}

// ---------------------------------------------------------------------------------------------
// Services: status and open incidents; a new service for those who may make one.

export async function servicesPage({ section, session, report, toast }) {
  const body = el("tbody", {});
  section.append(el("h1", {}, "Services"),
    el("table", { class: "services" },
      el("thead", {}, el("tr", {}, ...["Service", "Status", "High", "Medium", "Low", "Maintenance"].map((h) => el("th", { scope: "col" }, h)))),
      body));
  const render = async () => {
    const { services } = await api("GET", "/api/services?limit=200");
    body.replaceChildren(...services.map((s) =>
      el("tr", { "data-id": s.id },
        el("td", {}, el("a", { href: `#/incidents?status=OPEN,ACKNOWLEDGED,SNOOZED,SUPPRESSED&serviceId=${encodeURIComponent(s.id)}` }, s.name)),
        el("td", {}, badge(s.status)),
        ...["HIGH", "MEDIUM", "LOW"].map((u) => el("td", { class: "number" }, String(s.openIncidents[u]))),
        el("td", {}, s.inMaintenance ? "in maintenance" : "–"))));
  };
  await render();
  if (can(session, "services:write")) {
    section.append(el("form", { class: "create", onsubmit: async (event) => {
      event.preventDefault();
      const name = new FormData(event.currentTarget).get("name");
      try {
        const { service } = await api("POST", "/api/services", { name });
        toast(`Created ${service.name}; its routing key is ${service.routingKey}`);
        event.target.reset();
        await render();
      } catch (err) {
        report(err);
      }
    } }, el("h2", {}, "New service"), el("label", {}, "Name ", el("input", { name: "name", required: true, maxlength: 255 })),
      el("button", { type: "submit" }, "Create")));
  }
  return follow({ topics: "incidents" }, () => render().catch(report), () => render().catch(report));
}

// ---------------------------------------------------------------------------------------------
// On call: who is on call now and next for every schedule, in the viewer's time zone.

export async function onCallPage({ section }) {
  const { schedules } = await api("GET", "/api/schedules?limit=200");
  const now = new Date();
  const to = new Date(now.getTime() + 30 * 86400e3);
  const body = el("tbody", {});
  section.append(el("h1", {}, "On call"), el("p", { class: "hint" }, `Times in your time zone, ${zone}.`),
    el("table", { class: "on-call" },
      el("thead", {}, el("tr", {}, ...["Schedule", "Now", "Until", "Next", "From"].map((h) => el("th", { scope: "col" }, h)))),
      body));
  for (const schedule of schedules) {
    const query = new URLSearchParams({ from: now.toISOString(), to: to.toISOString() });
    const { shifts } = await api("GET", `/api/schedules/${encodeURIComponent(schedule.id)}/shifts?${query}`);
    const current = shifts.find((s) => new Date(s.start) <= now && now < new Date(s.end));
    const next = shifts.find((s) => new Date(s.start) >= (current ? new Date(current.end) : now));
    body.append(el("tr", { "data-id": schedule.id },
      el("th", { scope: "row" }, schedule.name),
      el("td", {}, current?.user.name ?? "nobody"), el("td", {}, current ? time(current.end) : "–"),
      el("td", {}, next?.user.name ?? "nobody"), el("td", {}, next ? time(next.start) : "–")));
  }
  return () => {};
}
