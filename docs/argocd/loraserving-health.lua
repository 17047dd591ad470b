-- Argo CD health check for loraf.dev/LoRAServing (resource.customizations.health.loraf.dev_LoRAServing).
-- Reads status.conditions (Ready), status.adapters and status.observedGeneration.
-- Tested by tests/unit/test_argocd_health.py.
local hs = { status = "Progressing", message = "Waiting for the loraf operator" }

if obj.spec ~= nil and obj.spec.replicas == 0 then
  hs.status = "Suspended"
  hs.message = "Scaled to zero replicas"
  return hs
end

if obj.status == nil or obj.status.conditions == nil then
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

-- An adapter that failed to load stays failed until the spec changes.
if obj.status.adapters ~= nil then
  for _, a in ipairs(obj.status.adapters) do
    if a.state == "Failed" then
      hs.status = "Degraded"
      hs.message = "Adapter " .. a.name .. " failed: " .. (a.reason or "unknown reason")
      return hs
    end
  end
end

-- Reasons that mean the server will not come up without a change.
local broken = {
  Failed = true,
  ModelInvalid = true,
  AdapterFailed = true,
  CrashLoopBackOff = true,
  ErrImagePull = true,
  ImagePullBackOff = true,
  CreateContainerConfigError = true,
  EngineExited = true,
}

for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    local text = c.reason or "Ready"
    if c.message ~= nil and c.message ~= "" then
      text = text .. ": " .. c.message
    end
    hs.message = text
    if c.status == "True" then
      hs.status = "Healthy"
    elseif c.status == "False" and broken[c.reason] then
      hs.status = "Degraded"
    end
    return hs
  end
end
return hs
