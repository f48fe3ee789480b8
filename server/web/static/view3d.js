// A live 3D model of one machine, driven by its telemetry: the print head (or spindle, or laser)
// moves while it works and the part grows with the job's progress; a car drives its loop and a
// drone flies; the part that wears (nozzle, tool, tube, tyres, rotors) turns from green to red
// with wear, and hot parts glow with their temperature.

import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";

const WIDTH = 420, HEIGHT = 280;

function wearColor(wear) {
  const c = new THREE.Color();
  return c.setHSL(Math.max(0, 0.33 * (1 - wear / 100)), 0.85, 0.5);  // green → yellow → red
}

const mat = (color, extra = {}) => new THREE.MeshStandardMaterial({ color, roughness: 0.6, metalness: 0.2, ...extra });
const box = (w, h, d, m) => new THREE.Mesh(new THREE.BoxGeometry(w, h, d), m);

export class MachineView {
  constructor(host, kind) {
    this.host = host;
    this.kind = kind;
    this.t = { state: "idle", progress: 0, wear_pct: 0, temperatures_c: {} };
    this.renderer = new THREE.WebGLRenderer({ antialias: true });
    this.renderer.setSize(WIDTH, HEIGHT);
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
    host.appendChild(this.renderer.domElement);
    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(0x10161d);
    this.camera = new THREE.PerspectiveCamera(45, WIDTH / HEIGHT, 0.1, 100);
    this.camera.position.set(3.2, 2.6, 3.6);
    this.controls = new OrbitControls(this.camera, this.renderer.domElement);
    this.controls.target.set(0, 0.7, 0);
    this.controls.update();
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x223344, 1.2));
    const sun = new THREE.DirectionalLight(0xffffff, 1.6);
    sun.position.set(3, 5, 2);
    this.scene.add(sun);
    const grid = new THREE.GridHelper(8, 16, 0x2a3440, 0x1c242d);
    this.scene.add(grid);
    (kind === "car" ? this.buildCar : kind === "drone" ? this.buildDrone : this.buildFab).call(this);
    this.clock = new THREE.Clock();
    this.frame = this.frame.bind(this);
    this.raf = requestAnimationFrame(this.frame);
  }

  update(t) { this.t = t; }

  // -- fab machines: a gantry over a bed ---------------------------------------------------------
  buildFab() {
    const frame = mat(0x8a97a5);
    for (const [x, z] of [[-1, -1], [1, -1], [-1, 1], [1, 1]]) {
      const post = box(0.06, 1.8, 0.06, frame); post.position.set(x, 0.9, z); this.scene.add(post);
    }
    for (const z of [-1, 1]) { const bar = box(2.06, 0.06, 0.06, frame); bar.position.set(0, 1.8, z); this.scene.add(bar); }
    this.bed = box(1.8, 0.06, 1.8, mat(this.kind === "laser_cutter" ? 0x444c56 : 0x30363d));
    this.bed.position.y = 0.3;
    this.scene.add(this.bed);
    this.gantry = box(2.0, 0.08, 0.1, frame);
    this.gantry.position.y = 1.5;
    this.scene.add(this.gantry);
    this.head = new THREE.Group();
    this.head.add(box(0.22, 0.22, 0.22, mat(0x58a6ff)));
    this.wearMat = mat(0x3fb950, { emissive: 0x000000 });
    const tool = this.kind === "printer_3d" ? new THREE.ConeGeometry(0.06, 0.16, 16)
      : this.kind === "cnc_mill" ? new THREE.CylinderGeometry(0.025, 0.025, 0.3, 12) : new THREE.CylinderGeometry(0.04, 0.02, 0.14, 12);
    this.tool = new THREE.Mesh(tool, this.wearMat);
    this.tool.rotation.x = this.kind === "printer_3d" ? Math.PI : 0;
    this.tool.position.y = -0.18;
    this.head.add(this.tool);
    this.scene.add(this.head);
    if (this.kind === "laser_cutter") {
      this.beam = new THREE.Mesh(new THREE.CylinderGeometry(0.008, 0.008, 1, 6), new THREE.MeshBasicMaterial({ color: 0xff3b30 }));
      this.scene.add(this.beam);
    }
    this.part = box(0.7, 1, 0.7, mat(this.kind === "cnc_mill" ? 0xb0b8c0 : 0xf0883e));
    this.scene.add(this.part);
  }

  frameFab(time) {
    const { state, progress, wear_pct, temperatures_c } = this.t;
    const working = state === "working";
    const hot = temperatures_c.nozzle ?? temperatures_c.spindle ?? temperatures_c.tube ?? 20;
    const partTop = 0.33 + (this.kind === "cnc_mill" ? 0.5 * (1 - 0.6 * progress) : this.kind === "laser_cutter" ? 0.01 : 0.8 * progress);
    let x = -0.8, z = -0.8, y = 1.2;
    if (working) {
      x = 0.35 * Math.sin(time * 3.1); z = 0.35 * Math.sin(time * 1.7 + 1);
      y = partTop + 0.3;
    }
    this.head.position.set(x, y, z);
    this.gantry.position.set(0, y + 0.12, z);
    const h = Math.max(0.001, partTop - 0.33);
    this.part.scale.y = this.kind === "laser_cutter" ? 0.02 : h;
    this.part.position.y = 0.33 + (this.kind === "laser_cutter" ? 0.01 : h / 2);
    this.part.scale.x = this.part.scale.z = this.kind === "laser_cutter" ? 1.6 : 1;
    this.part.visible = working || progress > 0;
    if (this.beam) { this.beam.visible = working; this.beam.position.set(x, (y + 0.34) / 2, z); this.beam.scale.y = y - 0.34; }
    this.wearMat.color.copy(wearColor(wear_pct));
    this.wearMat.emissive.setRGB(Math.max(0, (hot - 40) / 400), 0.05 * Math.max(0, (hot - 40) / 400), 0);
    this.host.dataset.headX = x.toFixed(3);
  }

  // -- a car on its loop ---------------------------------------------------------------------------
  buildCar() {
    const road = new THREE.Mesh(new THREE.RingGeometry(1.6, 2.1, 64), mat(0x30363d, { side: THREE.DoubleSide }));
    road.rotation.x = -Math.PI / 2; road.position.y = 0.01;
    this.scene.add(road);
    this.car = new THREE.Group();
    const body = box(0.5, 0.18, 0.26, mat(0x58a6ff)); body.position.set(0, 0.16, 0); this.car.add(body);
    const cabin = box(0.26, 0.14, 0.22, mat(0x9ecbff)); cabin.position.set(-0.03, 0.31, 0); this.car.add(cabin);
    this.wearMat = mat(0x3fb950);
    for (const [x, z] of [[-0.17, -0.14], [0.17, -0.14], [-0.17, 0.14], [0.17, 0.14]]) {
      const tyre = new THREE.Mesh(new THREE.CylinderGeometry(0.07, 0.07, 0.05, 16), this.wearMat);
      tyre.rotation.x = Math.PI / 2; tyre.position.set(x, 0.07, z); this.car.add(tyre);
    }
    this.scene.add(this.car);
    this.batteryBar = box(0.05, 1, 0.05, mat(0x3fb950)); this.batteryBar.position.set(-2.6, 0.5, -2.6);
    this.scene.add(this.batteryBar);
    this.controls.target.set(0, 0, 0); this.camera.position.set(0, 4.2, 4.2); this.controls.update();
  }

  frameCar() {
    const { state, progress, wear_pct, battery_pct } = this.t;
    const a = state === "working" ? progress * Math.PI * 2 : 0;
    const r = 1.85;
    this.car.position.set(r * Math.cos(a), 0, r * Math.sin(a));
    this.car.rotation.y = -a - Math.PI / 2;
    this.wearMat.color.copy(wearColor(wear_pct));
    const b = (battery_pct ?? 100) / 100;
    this.batteryBar.scale.y = Math.max(0.02, b); this.batteryBar.position.y = b / 2;
    this.batteryBar.material.color.copy(wearColor(100 - b * 100));
    this.host.dataset.headX = this.car.position.x.toFixed(3);
  }

  // -- a drone ---------------------------------------------------------------------------------------
  buildDrone() {
    this.drone = new THREE.Group();
    this.drone.add(box(0.3, 0.08, 0.3, mat(0x58a6ff)));
    this.wearMat = mat(0x3fb950);
    this.rotors = [];
    for (const [x, z] of [[-0.35, -0.35], [0.35, -0.35], [-0.35, 0.35], [0.35, 0.35]]) {
      const arm = box(0.5, 0.03, 0.04, mat(0x8a97a5)); arm.position.set(x / 2, 0, z / 2); arm.rotation.y = Math.atan2(-z, x); this.drone.add(arm);
      const rotor = box(0.32, 0.01, 0.04, this.wearMat); rotor.position.set(x, 0.06, z); this.drone.add(rotor); this.rotors.push(rotor);
    }
    this.scene.add(this.drone);
    this.pad = new THREE.Mesh(new THREE.CircleGeometry(0.4, 32), mat(0x30363d)); this.pad.rotation.x = -Math.PI / 2; this.pad.position.y = 0.01;
    this.scene.add(this.pad);
  }

  frameDrone(time) {
    const { state, progress, wear_pct } = this.t;
    const flying = state === "working";
    const a = progress * Math.PI * 2;
    this.drone.position.set(flying ? 1.5 * Math.sin(a) : 0, flying ? 1.4 + 0.05 * Math.sin(time * 4) : 0.06, flying ? 1.5 * Math.cos(a) : 0);
    for (const r of this.rotors) r.rotation.y += flying ? 0.8 : 0.02;
    this.wearMat.color.copy(wearColor(wear_pct));
    this.host.dataset.headX = this.drone.position.x.toFixed(3);
  }

  frame() {
    this.raf = requestAnimationFrame(this.frame);
    const time = this.clock.getElapsedTime();
    if (this.kind === "car") this.frameCar(time);
    else if (this.kind === "drone") this.frameDrone(time);
    else this.frameFab(time);
    this.renderer.render(this.scene, this.camera);
  }

  dispose() {
    cancelAnimationFrame(this.raf);
    this.controls.dispose();
    this.renderer.dispose();
    this.renderer.domElement.remove();
  }
}
