-- wrk script: each request asks for another public sandbox, pub-0 .. pub-(N-1),
-- then starts over (N from the SANDBOXES environment variable, default 20000).
local n = tonumber(os.getenv("SANDBOXES") or "20000")
local i = 0
request = function()
  i = i + 1
  local id = "pub-" .. ((i + 7919 * (wrk.thread_id or 0)) % n)
  return wrk.format("GET", "/", { ["Host"] = "3000-" .. id .. ".preview.localhost" })
end
