// The console's shell: who is signed in, the sign-in form, and the pages by address
// (#/incidents, #/incidents/<id>, #/services, #/on-call).

import { api, ApiError } from "/console/api.js";
import { incidentsPage, incidentPage, servicesPage, onCallPage } from "/console/pages.js";

const view = document.getElementById("view");
const signIn = document.getElementById("sign-in");
const bar = document.querySelector("header.bar");
let session = null;
let leave = () => {};

function toast(text) {
  const element = document.getElementById("toast");
  element.textContent = text;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (element.textContent = ""), 6000);
}

// Errors from the API, shown where the person acted; a lapsed session goes back to sign-in.
function report(err) {
  if (err instanceof ApiError && err.status === 401) {
    showSignIn("Your session ended; sign in again.");
    return;
  }
  toast(err.message);
}

function showSignIn(message = "") {
  leave();
  session = null;
  bar.hidden = true;
  for (const child of [...view.children]) if (child !== signIn) child.remove();
  signIn.hidden = false;
  document.getElementById("sign-in-error").textContent = message;
  signIn.querySelector("input[name=email]").focus();
}

async function route() {
  if (!session) return;
  leave();
  for (const child of [...view.children]) if (child !== signIn) child.remove();
  signIn.hidden = true;
  bar.hidden = false;
  const [path] = (location.hash || "#/incidents").split("?");
  const [, page, id] = path.split("/");
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.toggleAttribute("aria-current", link.dataset.nav === page);
  }
  const section = document.createElement("section");
  view.append(section);
  const context = { session, section, report, toast };
  try {
    if (page === "incidents" && id) leave = await incidentPage(context, decodeURIComponent(id));
    else if (page === "services") leave = await servicesPage(context);
    else if (page === "on-call") leave = await onCallPage(context);
    else leave = await incidentsPage(context);
  } catch (err) {
    leave = () => {};
    report(err);
  }
}

function signedIn(user) {
  session = user;
  document.getElementById("who").textContent = `${user.name} (${user.role})`;
  route();
}

document.getElementById("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    const { user } = await api("POST", "/api/session", { email: form.get("email"), password: form.get("password") });
    event.target.reset();
    signedIn(user);
  } catch (err) {
    document.getElementById("sign-in-error").textContent =
      err.status === 401 ? "Wrong e-mail or password." : err.message;
  }
});

document.getElementById("sign-out").addEventListener("click", async () => {
  try {
    await api("DELETE", "/api/session");
  } finally {
    showSignIn("Signed out.");
  }
});

window.addEventListener("hashchange", route);

try {
  signedIn((await api("GET", "/api/session")).user);
} catch {
  showSignIn();
}
