// What every dashboard page shares: the API key (from the URL's #key=... once, then local
// storage), calls to the API with it, and the login form shown without one or with a bad one.
"use strict";

const $ = (id) => document.getElementById(id);

function apiKey() {
  const m = location.hash.match(/key=([^&]+)/);
  if (m) {
    localStorage.setItem("mailpipe.key", decodeURIComponent(m[1]));
    // The key leaves the address bar and the history; the rest of the fragment stays.
    const rest = location.hash.slice(1).split("&").filter((p) => !p.startsWith("key=")).join("&");
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
  return localStorage.getItem("mailpipe.key");
}

async function api(path) {
  const res = await fetch(path, { headers: { Authorization: "Bearer " + apiKey() } });
  const body = await res.json().catch(() => ({}));
  if (res.status === 401) { showLogin("That API key was not accepted."); throw new Error("unauthorized"); }
  if (!res.ok) throw new Error((body.errors || []).map((e) => `${e.field}: ${e.reason}`).join("; ") || res.statusText);
  return body;
}

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  if (message) $("error").textContent = message;
}

// Starts the page with `start` once a key is known: at once if one is stored, else after the
// login form is sent.
function withKey(start) {
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem("mailpipe.key", $("key").value.trim());
    run();
  });
  const run = () => {
    if (!apiKey()) return showLogin();
    $("login").hidden = true;
    $("app").hidden = false;
    start();
  };
  run();
}
