// End-to-end test of the Cairn web console in headless Chromium (driven by playwright-core):
// create the first administrator from the one-time setup link, enrol TOTP (the code computed
// here from the enrolled secret), sign out and back in with a fresh TOTP code, open a
// registered device, read /3/0, observe /3/0/13 and then the battery level /3/0/9 and see
// each plotted value change; on the
// Firmware & campaigns page see the demo's own campaign completed, upload the signed package
// the demo left for the console, start a campaign with it and watch it complete (every device
// updated), and read the new Firmware Version (/3/0/3) from a device; see the bootstrapped
// devices on the Bootstrap & credentials page and rotate one device's credentials there (it
// bootstraps again and still runs the new firmware).
//
// Environment: CAIRN_WEB_URL (the console), CAIRN_SETUP_LINK (printed by the server at first
// start), CAIRN_FIRMWARE_PACKAGE (the signed package to upload, version 1.2.0),
// CAIRN_DEVICES (how many devices the demo runs), CAIRN_SCREENSHOTS (directory for the PNGs,
// default ../target/web-tests), CHROMIUM (default /usr/bin/chromium). scripts/web-e2e.sh
// sets them up with `cairn demo`.

import { createHmac } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const base = required("CAIRN_WEB_URL");
const setupLink = required("CAIRN_SETUP_LINK");
const firmwarePackage = required("CAIRN_FIRMWARE_PACKAGE");
const devices = Number(required("CAIRN_DEVICES"));
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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls `probe` (the page's CSP forbids the eval that waitForFunction would use) until it
// returns something truthy; fails with `what` after `ms`.
async function until(probe, what, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(500);
  }
}

// Opens a device's page, reads /3/0 and checks its Firmware Version (/3/0/3).
async function readFirmwareVersion(page, endpoint, version, screenshot) {
  await page.goto(`${base}/devices/${endpoint}`);
  await until(
    async () => {
      await page.locator('button[data-op="read"][data-path="/3/0"]').click();
      await sleep(500);
      const shown = ((await page.locator("#value-3-0-3").textContent()) || "").trim();
      return shown === version || null;
    },
    `${endpoint} reports firmware ${version}`,
    30_000,
  );
  console.log(`${endpoint} reports firmware ${version} (/3/0/3)`);
  await page.screenshot({ path: join(shots, screenshot), fullPage: true });
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

    // The battery level (/3/0/9) drains by 1 % every 10 s: observed, the plot follows it.
    await page.locator('button[data-op="observe"][data-path="/3/0/9"]').click();
    await until(
      async () => ((await last.textContent()) || "").startsWith("/3/0/9 = "),
      "a first battery level",
      20_000,
    );
    const battery = await last.textContent();
    await until(
      async () => (await last.textContent()) !== battery,
      `the battery level changes from ${battery}`,
      40_000,
    );
    console.log(`observed ${battery} then ${await last.textContent()}`);
    await page.screenshot({ path: join(shots, "04-device-battery.png"), fullPage: true });

    // Firmware & campaigns: the demo's image is listed, and the campaign the demo started
    // once its fleet registered has completed (the table refreshes itself every 3 s).
    await page.getByRole("link", { name: "Firmware & campaigns" }).click();
    await page.waitForURL(`${base}/firmware`);
    await page.locator("#firmware td", { hasText: "demo-meter-firmware" }).first().waitFor();
    const demoCampaign = page.locator("#campaigns tr", { hasText: "demo update to 1.1.0" });
    await demoCampaign.filter({ hasText: "completed" }).waitFor({ timeout: 90_000 });
    await check(
      demoCampaign.locator("td").nth(3).textContent().then((t) => Number(t) === devices),
      `the demo's campaign updated all ${devices} devices`,
    );

    // Upload the signed 1.2.0 package through the form.
    await page.getByLabel(/Image file/).setInputFiles(firmwarePackage);
    await page.getByLabel("Package name").fill("demo-meter-firmware");
    await page.getByLabel("Package version").fill("1.2.0");
    await page.getByRole("button", { name: "Upload" }).click();
    await page.locator("#firmware tr", { hasText: "1.2.0" }).waitFor();
    await page.screenshot({ path: join(shots, "05-firmware.png"), fullPage: true });

    // Start a campaign with it over the demo's devices and watch it to its end: the campaign
    // page refreshes its progress every 2 s.
    await page.getByLabel("Name", { exact: true }).fill("spring rollout");
    await page
      .getByLabel("Image", { exact: true })
      .selectOption({ label: "demo-meter-firmware 1.2.0" });
    await page.getByLabel("Endpoint prefix").fill("demo-meter-");
    await page.getByLabel(/^Waves/).fill("50, 100");
    await page.getByRole("button", { name: "Start campaign" }).click();
    await page.waitForURL(new RegExp(`${base}/firmware/campaigns/`));
    await page.locator("svg.progress").first().waitFor();
    console.log(`campaign state: ${(await page.locator("#campaign-state").textContent()).trim()}`);
    await page.screenshot({ path: join(shots, "06-campaign-running.png"), fullPage: true });
    const finalState = await until(
      async () => {
        const state = (await page.locator("#campaign-state").textContent()).trim();
        return ["completed", "halted", "cancelled"].includes(state) ? state : null;
      },
      "the campaign finishes",
      120_000,
    );
    await page.screenshot({ path: join(shots, "07-campaign-completed.png"), fullPage: true });
    await check(Promise.resolve(finalState === "completed"), `the campaign completed (${finalState})`);
    await check(
      page.getByRole("button", { name: "Pause" }).isHidden(),
      "a finished campaign has no controls",
    );
    const outcomes = page.locator("#campaign-devices tbody tr");
    await check(outcomes.count().then((n) => n === devices), `the campaign lists ${devices} devices`);
    await check(
      page
        .locator("#campaign-devices .status", { hasText: /^updated$/ })
        .count()
        .then((n) => n === devices),
      "every device of the campaign is updated",
    );
    console.log(`campaign completed: ${devices} devices updated`);
    await page.getByRole("link", { name: "Back to firmware & campaigns" }).click();
    await page.waitForURL(`${base}/firmware`);
    await page
      .locator("#campaigns tr", { hasText: "spring rollout" })
      .filter({ hasText: "completed" })
      .waitFor();
    await page.screenshot({ path: join(shots, "08-campaign-list.png"), fullPage: true });

    // The device itself reports the new firmware version.
    await readFirmwareVersion(page, endpoint, "1.2.0", "09-device-updated.png");

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
    await page.screenshot({ path: join(shots, "10-bootstrap.png"), fullPage: true });

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
    await page.screenshot({ path: join(shots, "11-rotation.png"), fullPage: true });

    // Bootstrapped again, the device still has its Firmware Update object and its flash.
    await readFirmwareVersion(page, endpoint, "1.2.0", "12-device-after-rotation.png");

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
