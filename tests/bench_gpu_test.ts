import nodeAssert from "node:assert/strict";

const assert = (cond: boolean, message: string) => nodeAssert.ok(cond, message);
const assertEquals = (a: unknown, b: unknown, message?: string) =>
  nodeAssert.deepStrictEqual(a, b, message);
import {
  type CommandRunner,
  gpuCheckOptions,
  gpuTable,
  type MachineProbe,
  planSetup,
  probeMachine,
} from "../bench/gpu.ts";
import { loadReference, referenceUnavailableReason } from "../dev/ref/llama_cpp.ts";

const NVIDIA_BOX: MachineProbe = {
  nvidiaGpus: ["NVIDIA H200"],
  nvidiaDriver: "570.86.15",
  libraries: { "libcuda.so.1": "/usr/lib/x86_64-linux-gnu/libcuda.so.1" },
  icds: [],
  root: true,
  apt: true,
};

Deno.test("an NVIDIA machine without a Vulkan loader gets libvulkan1 installed", () => {
  const plan = planSetup(NVIDIA_BOX, { install: true });
  assertEquals(plan.commands.slice(0, 2), [
    ["apt-get", "update", "-qq"],
    ["apt-get", "install", "-y", "-qq", "libvulkan1"],
  ]);
  // no NVIDIA Vulkan driver library in the container: said, not assumed
  assert(plan.notes.some((n) => n.includes("libGLX_nvidia.so.0")), plan.notes.join("\n"));
  // the CUDA runtime is missing too: Ubuntu's CUDA 12 runtime packages
  assertEquals(plan.commands[2], ["apt-get", "install", "-y", "-qq", "libcudart12", "libcublas12"]);
  assertEquals(plan.builds, ["vulkan", "cuda"]);
});

Deno.test("with --no-install nothing is installed and the notes say what to run", () => {
  const plan = planSetup(NVIDIA_BOX, { install: false });
  assertEquals(plan.commands, []);
  assert(plan.notes.some((n) => n.includes("apt-get install libvulkan1")), plan.notes.join("\n"));
  assertEquals(plan.builds, ["vulkan"]);
});

Deno.test("NVIDIA's driver library without a manifest gets one, and the GPU processes use it", () => {
  const plan = planSetup({
    ...NVIDIA_BOX,
    libraries: {
      "libvulkan.so.1": "/lib/x86_64-linux-gnu/libvulkan.so.1",
      "libGLX_nvidia.so.0": "/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0",
      "libcuda.so.1": "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
      "libcudart.so.13": "/usr/local/cuda/lib64/libcudart.so.13",
      "libcublas.so.13": "/usr/local/cuda/lib64/libcublas.so.13",
    },
  }, { install: true });
  assertEquals(plan.commands, []);
  const icd = JSON.parse(plan.writeIcd!.text);
  assertEquals(icd.ICD.library_path, "/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0");
  assertEquals(plan.env.VK_DRIVER_FILES, plan.writeIcd!.path);
  assertEquals(plan.builds, ["vulkan", "cuda"]);
});

Deno.test("without an NVIDIA GPU the check says so and compares with llama.cpp's CPU build", () => {
  const plan = planSetup({
    nvidiaGpus: [],
    libraries: { "libvulkan.so.1": "/lib/x86_64-linux-gnu/libvulkan.so.1" },
    icds: [{ file: "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json", library: "lvp", nvidia: false }],
    root: true,
    apt: true,
  }, { install: true });
  assertEquals(plan.commands, []);
  assert(plan.notes[0]!.startsWith("no NVIDIA GPU"), plan.notes[0]!);
  assertEquals(plan.builds, ["cpu", "vulkan"]);
  assertEquals(plan.env.GGML_VK_VISIBLE_DEVICES, "0");
});

Deno.test("the probe reads nvidia-smi and ldconfig, and finds no GPU when they say none", async () => {
  const fake = (answers: Record<string, string>): CommandRunner => (cmd) =>
    Promise.resolve(
      cmd in answers
        ? { code: 0, stdout: answers[cmd]!, stderr: "" }
        : { code: 127, stdout: "", stderr: `${cmd}: not found` },
    );
  const p = await probeMachine(fake({
    "nvidia-smi": "NVIDIA H200, 570.86.15\n",
    ldconfig: "\tlibvulkan.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libvulkan.so.1\n" +
      "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n" +
      "\tlibcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1\n",
    id: "0\n",
  }));
  assertEquals(p.nvidiaGpus, ["NVIDIA H200"]);
  assertEquals(p.nvidiaDriver, "570.86.15");
  assertEquals(p.libraries["libvulkan.so.1"], "/usr/lib/x86_64-linux-gnu/libvulkan.so.1");
  assertEquals(p.libraries["libcuda.so.1"], "/usr/lib/x86_64-linux-gnu/libcuda.so.1");
  assertEquals([p.root, p.apt], [true, false]);
});

Deno.test("the table has one row per engine with od-moe's ratio to it", () => {
  const t = gpuTable([
    { preset: "p", engine: "od-moe", device: "d", prefill: 10, decode: 2, ratio: null, tokens: "" },
    {
      preset: "p",
      engine: "llama.cpp vulkan",
      device: "d",
      prefill: 40,
      decode: 8,
      ratio: [0.25, 0.25],
      tokens: "same",
    },
  ]);
  assert(t.includes("| p | llama.cpp vulkan | d | 40 | 8 | 0.25×, 0.25× | same |"), t);
  assertEquals(t.split("\n").length, 4);
});

Deno.test("bad flags are refused by name", () => {
  let message = "";
  try {
    gpuCheckOptions(["--presets", "qwen3-30b-a3b,nope"]);
  } catch (e) {
    message = (e as Error).message;
  }
  assert(message.includes("nope"), message);
});

Deno.test({
  name: "llama.cpp's GPU builds load from their packages, or say why not",
  ignore: referenceUnavailableReason("vulkan") !== null,
  async fn() {
    // each build in its own process (they share library names)
    for (const build of ["vulkan", "cuda"]) {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--lock=dev/deno.lock",
          "-A",
          new URL("../bench/gpu.ts", import.meta.url).pathname,
          "--llama-devices",
          build,
        ],
        env: { GGML_VK_VISIBLE_DEVICES: "0" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const j = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
      // either the devices it found (always the CPU) or a reason naming the library
      assert(
        j.devices?.some((d: { type: string }) => d.type === "cpu") ||
          /lib\w+[.]so/.test(j.error ?? ""),
        `${build}: ${JSON.stringify(j)}`,
      );
    }
    // this process keeps the CPU build; a second build is refused with a reason
    if (referenceUnavailableReason() === null) {
      loadReference();
      let message = "";
      try {
        loadReference("vulkan");
      } catch (e) {
        message = (e as Error).message;
      }
      assert(message.includes("another process"), message);
    }
  },
});
