/**
 * Asks the Vulkan loader which physical devices exist and of what kind, before ggml's Vulkan
 * backend is loaded. ggml only uses discrete and integrated GPUs unless GGML_VK_VISIBLE_DEVICES is
 * set; on a machine whose only Vulkan device is a software one (Mesa's lavapipe), qtune makes it
 * visible so the Vulkan code path can run there (DESIGN.md §3).
 */
import koffi, { type LibraryHandle } from 'koffi';

export type VulkanDeviceType = 'other' | 'integrated_gpu' | 'discrete_gpu' | 'virtual_gpu' | 'cpu';

export interface VulkanPhysicalDevice {
  index: number;
  name: string;
  type: VulkanDeviceType;
  /** The driver's own description of its version (`driverInfo`, e.g. `Mesa 25.0.7`), or '' when not reported. */
  driverInfo: string;
}

const TYPES: VulkanDeviceType[] = ['other', 'integrated_gpu', 'discrete_gpu', 'virtual_gpu', 'cpu'];

let declared = false;
/**
 * VkPhysicalDeviceDriverProperties.driverInfo through vkGetPhysicalDeviceProperties2 (Vulkan 1.2):
 * Mesa's lavapipe reports `driverVersion` 1 and puts its release in this string.
 */
function driverInfo(getProps2: (dev: unknown, props2: Uint8Array) => void, dev: unknown): string {
  const DRIVER_PROPS_SIZE = 536; // sType, pNext, driverID, driverName[256], driverInfo[256], conformanceVersion
  const DRIVER_INFO_OFFSET = 276;
  const drv: unknown = koffi.alloc('uint8_t', DRIVER_PROPS_SIZE);
  try {
    koffi.encode(drv, 'uint8_t', new Array<number>(DRIVER_PROPS_SIZE).fill(0), DRIVER_PROPS_SIZE);
    koffi.encode(drv, 0, 'uint32_t', 1000196000); // VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES
    const props2 = new Uint8Array(16 + PROPS_BYTES);
    const view = new DataView(props2.buffer);
    view.setUint32(0, 1000059001, true); // VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2
    view.setBigUint64(8, koffi.address(drv), true);
    getProps2(dev, props2);
    const bytes = Uint8Array.from(koffi.decode(drv, DRIVER_INFO_OFFSET, 'uint8_t', 256) as number[]);
    const end = bytes.indexOf(0);
    return new TextDecoder().decode(bytes.subarray(0, end < 0 ? 256 : end));
  } catch {
    return '';
  } finally {
    koffi.free(drv);
  }
}

function declare(): void {
  if (declared) return;
  koffi.opaque('VkInstance_T');
  koffi.opaque('VkPhysicalDevice_T');
  koffi.struct('VkApplicationInfo', {
    sType: 'uint32_t',
    pNext: 'void *',
    pApplicationName: 'const char *',
    applicationVersion: 'uint32_t',
    pEngineName: 'const char *',
    engineVersion: 'uint32_t',
    apiVersion: 'uint32_t',
  });
  koffi.struct('VkInstanceCreateInfo', {
    sType: 'uint32_t',
    pNext: 'void *',
    flags: 'uint32_t',
    pApplicationInfo: 'VkApplicationInfo *',
    enabledLayerCount: 'uint32_t',
    ppEnabledLayerNames: 'void *',
    enabledExtensionCount: 'uint32_t',
    ppEnabledExtensionNames: 'void *',
  });
  declared = true;
}

/** Offsets in VkPhysicalDeviceProperties (vulkan_core.h): apiVersion, driverVersion, vendorID, deviceID, deviceType, deviceName. */
const PROPS_DEVICE_TYPE = 16;
const PROPS_DEVICE_NAME = 20;
const PROPS_NAME_LEN = 256;
const PROPS_BYTES = 1024; // the struct is 824 bytes on 64-bit platforms

/**
 * Lists Vulkan physical devices, or returns an explanation when the loader or a driver is missing.
 * Never throws: a machine without Vulkan is normal.
 */
export function probeVulkanDevices(): { devices: VulkanPhysicalDevice[] } | { error: string } {
  let lib: LibraryHandle;
  try {
    lib = koffi.load(process.platform === 'darwin' ? 'libvulkan.1.dylib' : 'libvulkan.so.1');
  } catch {
    return {
      error:
        'the Vulkan loader (libvulkan.so.1) is not installed; on Debian/Ubuntu: apt-get install libvulkan1 mesa-vulkan-drivers',
    };
  }
  try {
    declare();
    const createInstance = lib.func(
      'int vkCreateInstance(const VkInstanceCreateInfo *info, void *alloc, _Out_ VkInstance_T **instance)',
    );
    const enumerate = lib.func(
      'int vkEnumeratePhysicalDevices(VkInstance_T *instance, _Inout_ uint32_t *count, _Out_ VkPhysicalDevice_T **devices)',
    );
    const getProps = lib.func(
      'void vkGetPhysicalDeviceProperties(VkPhysicalDevice_T *dev, _Out_ uint8_t *props)',
    );
    const getProps2 = lib.func(
      'void vkGetPhysicalDeviceProperties2(VkPhysicalDevice_T *dev, _Inout_ uint8_t *props2)',
    );
    const destroy = lib.func('void vkDestroyInstance(VkInstance_T *instance, void *alloc)');

    const out: [unknown] = [null];
    const info = {
      sType: 1, // VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO
      pNext: null,
      flags: 0,
      // Vulkan 1.2, for VkPhysicalDeviceDriverProperties
      pApplicationInfo: {
        sType: 0, // VK_STRUCTURE_TYPE_APPLICATION_INFO
        pNext: null,
        pApplicationName: 'qtune',
        applicationVersion: 0,
        pEngineName: 'qtune',
        engineVersion: 0,
        apiVersion: (1 << 22) | (2 << 12),
      },
      enabledLayerCount: 0,
      ppEnabledLayerNames: null,
      enabledExtensionCount: 0,
      ppEnabledExtensionNames: null,
    };
    const rc = createInstance(info, null, out) as number;
    if (rc !== 0 || out[0] === null)
      return { error: `vkCreateInstance failed with VkResult ${rc} (no Vulkan driver?)` };
    const instance = out[0];
    try {
      const count: [number] = [0];
      enumerate(instance, count, null);
      const n = count[0];
      const handles: unknown[] = new Array<unknown>(n).fill(null);
      if (n > 0) enumerate(instance, count, handles);
      const devices: VulkanPhysicalDevice[] = [];
      for (let i = 0; i < count[0]; i++) {
        const props = new Uint8Array(PROPS_BYTES);
        getProps(handles[i], props);
        const view = new DataView(props.buffer);
        const typeId = view.getUint32(PROPS_DEVICE_TYPE, true);
        const nameBytes = props.subarray(PROPS_DEVICE_NAME, PROPS_DEVICE_NAME + PROPS_NAME_LEN);
        const end = nameBytes.indexOf(0);
        const name = new TextDecoder().decode(nameBytes.subarray(0, end < 0 ? PROPS_NAME_LEN : end));
        devices.push({
          index: i,
          name,
          type: TYPES[typeId] ?? 'other',
          driverInfo: driverInfo(getProps2, handles[i]),
        });
      }
      return { devices };
    } finally {
      destroy(instance, null);
    }
  } catch (e) {
    return { error: `Vulkan probe failed: ${e instanceof Error ? e.message : String(e)}` };
  } finally {
    lib.unload();
  }
}
