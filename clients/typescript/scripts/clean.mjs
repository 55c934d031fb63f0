// Removes the build outputs so that a file deleted from src/ leaves nothing
// stale in dist/ (tsc never deletes).
import { rmSync } from "node:fs";
for (const dir of ["dist", "dist-bundle"]) {
  rmSync(new URL(`../${dir}`, import.meta.url), { recursive: true, force: true });
}
