-- Argo CD health check for loraf.dev/LoRAFineTune (resource.customizations.health.loraf.dev_LoRAFineTune).
-- Reads only status.conditions (the contract; status.phase is for people) and
-- status.observedGeneration. Tested by tests/unit/test_argocd_health.py.
local hs = { status = "Progressing", message = "Waiting for the loraf operator" }

local function condition(t)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

if obj.status == nil or obj.status.conditions == nil then
  return hs
end

-- A status computed for an older spec says nothing about the current one.
local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local failed = condition("Failed")
if failed ~= nil and failed.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(failed)
  return hs
end

local validated = condition("Validated")
if validated ~= nil and validated.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(validated)
  return hs
end

local succeeded = condition("Succeeded")
if succeeded ~= nil and succeeded.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(succeeded)
  return hs
end

local suspended = condition("Suspended")
if suspended ~= nil and suspended.status == "True" then
  hs.status = "Suspended"
  hs.message = describe(suspended)
  return hs
end

-- The pod cannot start because of its configuration: no retry will fix that by itself.
local stuck = {
  ErrImagePull = true,
  ImagePullBackOff = true,
  InvalidImageName = true,
  CreateContainerConfigError = true,
}
local running = condition("Running")
if running ~= nil and running.status == "False" and stuck[running.reason] then
  hs.status = "Degraded"
  hs.message = describe(running)
  return hs
end
if running ~= nil and running.status == "True" then
  hs.message = describe(running)
  return hs
end

-- Still on its way: waiting for a GPU (Unschedulable), pulling, or just created.
local scheduled = condition("Scheduled")
if scheduled ~= nil and scheduled.status == "False" then
  hs.message = describe(scheduled)
elseif obj.status.message ~= nil and obj.status.message ~= "" then
  hs.message = obj.status.message
end
return hs
