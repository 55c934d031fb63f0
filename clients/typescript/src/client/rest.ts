// The gateway's plain HTTP calls: cancel, snapshot, kinds, the job list.

import type { HttpClient } from "../http.js";
import type { JobList, JobSnapshot, Kind } from "../types.js";
import type { JobsQuery } from "./options.js";

export function cancelJob(http: HttpClient, jobId: string): Promise<JobSnapshot> {
  return http.json<JobSnapshot>(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
}

export function jobSnapshot(http: HttpClient, jobId: string): Promise<JobSnapshot> {
  return http.json<JobSnapshot>(`/v1/jobs/${encodeURIComponent(jobId)}`);
}

export async function listKinds(http: HttpClient): Promise<Kind[]> {
  const body = await http.json<{ kinds: Kind[] }>("/v1/kinds");
  return body.kinds;
}

export function listJobs(http: HttpClient, query: JobsQuery): Promise<JobList> {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined) {
      params.set(key, String(value));
    }
  }
  const search = params.toString();
  return http.json<JobList>(`/v1/jobs${search ? `?${search}` : ""}`);
}
