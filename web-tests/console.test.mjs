// End-to-end test of the Cairn web console in headless Chromium (driven by playwright-core):
// create the first administrator from the one-time setup link, enrol TOTP (the code computed
// here from the enrolled secret), sign out and back in with a fresh TOTP code, open a
// registered device, read /3/0, observe /3/0/13 and see its plotted value change; upload a
// firmware image through the Firmware & campaigns page and see it listed, start a campaign
// and see its progress; see the bootstrapped devices on the Bootstrap & credentials page and
// rotate one device's credentials there.
//
// Environment: CAIRN_WEB_URL (the console), CAIRN_SETUP_LINK (printed by the server at first
// start), CAIRN_SCREENSHOTS (directory for the PNGs, default ../target/web-tests),
// CHROMIUM (default /usr/bin/chromium). scripts/web-e2e.sh sets them up with `cairn demo`.

import { createHmac } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const base = required("CAIRN_WEB_URL");
const setupLink = required("CAIRN_SETUP_LINK");
const shots = resolve(process.env.CAIRN_SCREENSHOTS || "../target/web-tests");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const username = "admin";
const password = "a long and uncommon passphrase";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function base32Decode(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0;
  let value = 0;
  const out = [];
  for (const char of text.replace(/=+$/, "").toUpperCase()) {
    const index = alphabet.indexOf(char);
    if (index < 0) throw new Error(`not base32: ${char}`);
    value = (value << 5) | index;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

// RFC 6238 TOTP with HMAC-SHA-1, 30 s steps, 6 digits.
function totp(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = createHmac("sha1", secret).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const code = (mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return String(code).padStart(6, "0");
}

const currentStep = () => Math.floor(Date.now() / 1000 / 30);

async function check(condition, message) {
  if (!(await condition)) throw new Error(message);
}

async function main() {
  mkdirSync(shots, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), "cairn-chromium-"));
  // A fresh profile directory (playwright passes it as --user-data-dir).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1366, height: 900 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const violations = [];
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(20_000);
    page.on("console", (message) => {
      if (/Content Security Policy/i.test(message.text())) violations.push(message.text());
    });

    // Setup: the one-time link creates the first administrator.
    await page.goto(setupLink);
    await page.getByLabel("User name").fill(username);
    await page.getByLabel(/^Password/).fill(password);
    await page.getByRole("button", { name: "Create administrator" }).click();
    await page.waitForURL(`${base}/enrol`);

    // Enrolment: the secret is shown with its QR code; the code is computed here.
    await page.getByRole("button", { name: "Set up an authenticator" }).click();
    await page.getByRole("img", { name: /QR code/ }).waitFor();
    const secret = base32Decode((await page.locator("#totp-secret").textContent()).trim());
    await page.screenshot({ path: join(shots, "01-enrol.png") });
    const enrolStep = currentStep();
    await page.getByLabel("Code shown by the authenticator").fill(totp(secret, enrolStep));
    await page.getByRole("button", { name: "Confirm" }).click();
    await page.locator("#recovery-codes li").first().waitFor();
    await check(
      page.locator("#recovery-codes li").count().then((n) => n === 10),
      "ten recovery codes are shown",
    );
    await page.getByRole("link", { name: "Continue to the console" }).click();
    await page.waitForURL(`${base}/`);

    // Sign out, and back in with the password and a TOTP code of a later time step (a
    // code is never accepted twice).
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.waitForURL(`${base}/login`);
    await page.getByLabel("User name").fill(username);
    await page.getByLabel("Password").fill(password);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.waitForURL(`${base}/login/totp`);
    while (currentStep() <= enrolStep) await new Promise((r) => setTimeout(r, 500));
    await page.getByLabel(/Code from your authenticator/).fill(totp(secret, currentStep()));
    await page.getByRole("button", { name: "Verify" }).click();
    await page.waitForURL(`${base}/`);

    // The fleet: wait for a registered device.
    let link = null;
    for (let attempt = 0; attempt < 30 && !link; attempt++) {
      const links = page.locator("#fleet a");
      if ((await links.count()) > 0) link = links.first();
      else {
        await new Promise((r) => setTimeout(r, 1000));
        await page.reload();
      }
    }
    if (!link) throw new Error("no registered device in the fleet table");
    await page.screenshot({ path: join(shots, "02-fleet.png") });
    const endpoint = (await link.textContent()).trim();

    // Search as you type (htmx swaps the table in): only the matching device stays.
    const rows = page.locator("#fleet tbody tr");
    const total = await rows.count();
    await page.getByLabel("Endpoint contains").fill(endpoint);
    for (let i = 0; i < 40 && (await rows.count()) !== 1; i++) {
      await new Promise((r) => setTimeout(r, 250));
    }
    await check(rows.count().then((n) => n === 1), `the search keeps 1 of ${total} devices`);
    await page.getByLabel("Endpoint contains").fill("no-such-device");
    for (let i = 0; i < 40 && (await rows.count()) !== 0; i++) {
      await new Promise((r) => setTimeout(r, 250));
    }
    await check(rows.count().then((n) => n === 0), "the search can match nothing");
    await page.getByLabel("Endpoint contains").fill("");
    await page.locator("#fleet a").first().waitFor();
    link = page.locator("#fleet a", { hasText: endpoint });
    await link.click();
    await page.waitForURL(`${base}/devices/${endpoint}`);

    // Read /3/0: the manufacturer shows in the tree.
    await page.locator('button[data-op="read"][data-path="/3/0"]').click();
    await page.locator("#value-3-0-0").filter({ hasText: /\S/ }).waitFor();
    const manufacturer = await page.locator("#value-3-0-0").textContent();
    console.log(`read /3/0 of ${endpoint}: manufacturer ${manufacturer}`);
    await page.screenshot({ path: join(shots, "03-device-read.png"), fullPage: true });

    // Observe the device clock every second and see the plotted value change.
    await page.evaluate(async (endpoint) => {
      const csrf = document.querySelector('meta[name="csrf-token"]').content;
      const response = await fetch(`/api/devices/${encodeURIComponent(endpoint)}/write-attributes`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ path: "/3/0/13", attributes: { pmin: 1, pmax: 2 } }),
      });
      if (!response.ok) throw new Error(`write-attributes: ${response.status}`);
    }, endpoint);
    await page.locator('button[data-op="observe"][data-path="/3/0/13"]').click();
    const last = page.locator("#chart-last");
    await last.waitFor();
    const first = await last.textContent();
    // Polled from here: the page's CSP forbids the eval that waitForFunction would use.
    const deadline = Date.now() + 30_000;
    while ((await last.textContent()) === first) {
      if (Date.now() > deadline) throw new Error(`the observed value stayed ${first}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    const changed = await last.textContent();
    console.log(`observed ${first} then ${changed}`);
    await check(
      page.locator("#chart polyline").count().then((n) => n === 1),
      "the chart is drawn",
    );
    await page.screenshot({ path: join(shots, "04-device-observe.png"), fullPage: true });

    // Firmware & campaigns: the demo's image is listed; upload one through the form.
    await page.getByRole("link", { name: "Firmware & campaigns" }).click();
    await page.waitForURL(`${base}/firmware`);
    await page.locator("#firmware td", { hasText: "demo-meter-firmware" }).first().waitFor();
    const imagePath = join(profile, "meter-2.0.0.bin");
    writeFileSync(imagePath, Buffer.from(Array.from({ length: 100_000 }, (_, i) => (i * 7919) & 0xff)));
    await page.getByLabel(/Image file/).setInputFiles(imagePath);
    await page.getByLabel("Package name").fill("meter-firmware");
    await page.getByLabel("Package version").fill("2.0.0");
    await page.getByRole("button", { name: "Upload" }).click();
    await page.locator("#firmware td", { hasText: /^meter-firmware$/ }).waitFor();
    await check(
      page.locator("#firmware td", { hasText: "100000 bytes" }).count().then((n) => n === 1),
      "the uploaded image is listed with its size",
    );
    await page.screenshot({ path: join(shots, "05-firmware.png"), fullPage: true });

    // Start a campaign over the demo's devices; its page shows the progress bar and the state.
    await page.getByLabel("Name", { exact: true }).fill("spring rollout");
    await page.getByLabel("Image", { exact: true }).selectOption({ label: "meter-firmware 2.0.0" });
    await page.getByLabel("Endpoint prefix").fill("demo-meter-");
    await page.getByLabel(/^Waves/).fill("50, 100");
    await page.getByRole("button", { name: "Start campaign" }).click();
    await page.waitForURL(new RegExp(`${base}/firmware/campaigns/`));
    await page.locator("svg.progress").first().waitFor();
    const state = (await page.locator("#campaign-state").textContent()).trim();
    console.log(`campaign state: ${state}`);
    await check(
      Promise.resolve(["running", "paused", "halted", "completed"].includes(state)),
      `the campaign has a state (${state})`,
    );
    // Let the bar move (the fragment is refreshed every 2 s).
    await new Promise((r) => setTimeout(r, 4000));
    await page.screenshot({ path: join(shots, "06-campaign.png"), fullPage: true });
    await page.getByRole("link", { name: "Back to firmware & campaigns" }).click();
    await page.waitForURL(`${base}/firmware`);
    await page.locator("#campaigns a", { hasText: "spring rollout" }).waitFor();
    await page.screenshot({ path: join(shots, "06-campaign-list.png"), fullPage: true });

    // Bootstrap & credentials: the demo's devices bootstrapped with their factory
    // credentials and use device-management credentials generated for them.
    await page.getByRole("link", { name: "Bootstrap & credentials" }).click();
    await page.waitForURL(`${base}/bootstrap`);
    await page.locator("#templates td", { hasText: "demo-meter-" }).first().waitFor();
    const deviceRows = page.locator("#bootstrap-devices tbody tr");
    await deviceRows.first().waitFor();
    await check(deviceRows.count().then((n) => n >= 3), "the demo's devices are listed");
    await check(
      page.locator("#bootstrap-devices td", { hasText: "in use" }).count().then((n) => n >= 3),
      "the devices use their generated credentials",
    );
    await page.screenshot({ path: join(shots, "07-bootstrap.png"), fullPage: true });

    // Rotate one device's credentials: it bootstraps again and registers with fresh ones.
    await page.locator("#r-endpoints").fill(endpoint);
    await page.getByRole("button", { name: "Rotate" }).click();
    await page.locator("#op-result", { hasText: /rotated \d+, pending \d+, failed \d+/ }).waitFor({ timeout: 60_000 });
    const report = (await page.locator("#op-result").textContent()).trim();
    console.log(`rotation of ${endpoint}: ${report}`);
    await check(Promise.resolve(report === "rotated 1, pending 0, failed 0"), `the device rotated (${report})`);
    // The devices table refreshes (htmx): the device bootstrapped a second time.
    await page
      .locator("#bootstrap-devices tr", { hasText: endpoint })
      .filter({ hasText: "2 of 2" })
      .waitFor({ timeout: 20_000 });
    await page.screenshot({ path: join(shots, "08-rotation.png"), fullPage: true });

    if (violations.length > 0) {
      throw new Error(`content security policy violations:\n${violations.join("\n")}`);
    }
    console.log(`web console end-to-end test passed; screenshots in ${shots}`);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
